"""Resource quantities as Bacalhau writes them: CPU in Kubernetes units, bytes in human units."""

from __future__ import annotations

import re

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_BYTES = re.compile(r"^(\d+(?:\.\d+)?)([kmgtpe]?)(i?)(b?)$")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_cpu(text: str) -> float:
    """Cores from `500m`, `2`, `0.5`."""
    match = _CPU.match(text.strip().lower().replace(" ", ""))
    if not match:
        raise ValueError(f"{text!r} is not a CPU quantity (examples: 500m, 2, 0.5)")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def parse_bytes(text: str) -> int:
    """Bytes from `512Mb`, `2Gi`, `1gb`, `1024`: decimal units, or binary ones with `i`."""
    match = _BYTES.match(text.strip().lower().replace(" ", ""))
    if not match:
        raise ValueError(f"{text!r} is not a byte quantity (examples: 512Mb, 2Gb, 1Gi)")
    number, unit, binary, _ = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** _POWERS[unit])
