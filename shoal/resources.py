"""Resource quantities as Bacalhau writes them: CPU in Kubernetes units, bytes in human units."""

from __future__ import annotations

import re

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_BYTES = re.compile(r"^(\d+(?:\.\d+)?)([kmgtpe]?)(i?)(b?)$")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
MAX_CPU = 1_000_000.0  # cores
MAX_BYTES = 2**62  # far beyond any machine, and inside a signed 64-bit column


def parse_cpu(text: str) -> float:
    """Cores from `500m`, `2`, `0.5`."""
    match = _CPU.match(text.strip().lower().replace(" ", ""))
    if not match:
        raise ValueError(f"{text!r} is not a CPU quantity (examples: 500m, 2, 0.5)")
    value = float(match.group(1)) / (1000 if match.group(2) else 1)
    if value > MAX_CPU:
        raise ValueError(f"{text!r} is more CPU than any node has (at most {MAX_CPU:g} cores)")
    return value


def parse_bytes(text: str) -> int:
    """Bytes from `512Mb`, `2Gi`, `1gb`, `1024`: decimal units, or binary ones with `i`."""
    match = _BYTES.match(text.strip().lower().replace(" ", ""))
    if not match:
        raise ValueError(f"{text!r} is not a byte quantity (examples: 512Mb, 2Gb, 1Gi)")
    number, unit, binary, _ = match.groups()
    base = 1024 if binary else 1000
    value = float(number) * base ** _POWERS[unit]
    if value > MAX_BYTES:
        raise ValueError(f"{text!r} is more than any node has (at most {MAX_BYTES} bytes)")
    return int(value)
