"""Label selectors in Kubernetes' syntax, as Bacalhau's `--constraints` and `labels=` take them:
`region=eu,gpu!=none,zone in (a, b),tier notin (x),ssd,!spot,cores>4,cores<64`."""

from __future__ import annotations

import re
from typing import Any

from shoal.errors import SpecError

_SET = re.compile(r"^([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_COMPARE = re.compile(r"^([A-Za-z0-9_./-]+)\s*(==|!=|=|>|<)\s*([A-Za-z0-9_.-]*)$")
_EXISTS = re.compile(r"^(!?)([A-Za-z0-9_./-]+)$")


def _split(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_selector(text: str, field: str = "selector") -> list[dict[str, Any]]:
    """Requirements as job spec Constraints: `[{Key, Operator, Values}]`."""
    requirements = []
    for part in _split(text):
        if match := _SET.match(part):
            values = [v.strip() for v in match.group(3).split(",") if v.strip()]
            if not values:
                raise SpecError(field, f"{part!r} needs at least one value")
            requirements.append({"Key": match.group(1), "Operator": match.group(2), "Values": values})
        elif match := _COMPARE.match(part):
            op = {">": "gt", "<": "lt"}.get(match.group(2), match.group(2))
            requirements.append({"Key": match.group(1), "Operator": op, "Values": [match.group(3)]})
        elif match := _EXISTS.match(part):
            requirements.append({"Key": match.group(2), "Operator": "!" if match.group(1) else "exists", "Values": []})
        else:
            raise SpecError(field, f"{part!r} is not a label requirement (key=value, key!=value, key in (a,b), "
                                   "key notin (a,b), key, !key, key>n, key<n)")
    return requirements
