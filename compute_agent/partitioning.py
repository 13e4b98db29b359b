"""Which S3 objects a partition sees, as Bacalhau splits them: a deterministic FNV-1a hash of a key part, modulo
the job's Count. `object` hashes the whole key; `regex` the capture groups (or the whole match); `substring` a
slice of the key; `date` a date parsed from the key's start. Key parts are taken after the spec's Key prefix;
a key the rule cannot read goes to partition 0. With one partition, or type `none`, every partition sees all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from shoal.spec import go_date_format

FALLBACK_PARTITION = 0
_GROUP_DELIMITER = "\x1f"  # cannot occur in an S3 key


def fnv1a_32(text: str) -> int:
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def select(keys: Iterable[str], *, count: int, index: int, prefix: str, partition: Mapping[str, Any]) -> list[str]:
    """The keys partition `index` of `count` should process."""
    keys = list(keys)
    kind = partition.get("Type") or "none"
    if count <= 1 or kind == "none":
        return keys
    prefix = prefix.strip().removesuffix("*")
    return [key for key in keys if _partition_of(key, prefix, kind, partition, count) == index]


def _partition_of(key: str, prefix: str, kind: str, partition: Mapping[str, Any], count: int) -> int:
    if kind == "object":
        return fnv1a_32(key) % count
    relative = key.removeprefix(prefix).removeprefix("/")
    part = _part(relative, kind, partition)
    return FALLBACK_PARTITION if part is None else fnv1a_32(part) % count


def _part(relative: str, kind: str, partition: Mapping[str, Any]) -> str | None:
    if kind == "regex":
        match = re.search(partition["Pattern"], relative)
        if match is None or not match.group(0):
            return None
        groups = [group for group in match.groups() if group]
        return _GROUP_DELIMITER.join(groups) if groups else match.group(0)
    if kind == "substring":
        start, end = int(partition["StartIndex"]), int(partition["EndIndex"])
        return relative[start:end] if len(relative) >= end else None
    if kind == "date":
        layout = str(partition["DateFormat"])
        strptime = go_date_format(layout)
        try:
            moment = datetime.strptime(relative[: len(layout)], strptime)
        except ValueError:
            return None
        return moment.strftime(strptime)
    raise ValueError(f"unknown partition type {kind!r}")
