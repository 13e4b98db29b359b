"""Placement: can this node run this task? Engines, publishers, input sources, label constraints and resources.

`unsuitable(node, needs, free)` returns the reasons a node cannot take the task (none: it can). The same rules
decide at submission whether any node could ever run a job (against the nodes' whole capacity), and at claim
time whether a polling node may take an execution now (against its free capacity, so it is never
over-committed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.resources import parse_bytes, parse_cpu

PREFERENCE_PREFIX = "favour_"


def exceeds(asked: float, left: float) -> bool:
    """More asked for than is left (within float rounding: 0.1 + 0.2 CPUs fit in 0.3)."""
    return asked > left + 1e-9


@dataclass(frozen=True)
class Resources:
    cpu: float = 0.0
    memory: float = 0
    disk: float = 0
    gpu: float = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory, self.disk + other.disk,
                         self.gpu + other.gpu)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory - other.memory, self.disk - other.disk,
                         self.gpu - other.gpu)

    def fits_in(self, free: Resources) -> bool:
        """Whether this much fits in `free`, as `unsuitable` judges it."""
        return not any(exceeds(asked, left) for asked, left in ((self.cpu, free.cpu), (self.memory, free.memory),
                                                                  (self.disk, free.disk), (self.gpu, free.gpu)))

    @classmethod
    def from_capacity(cls, capacity: Mapping[str, Any]) -> Resources:
        """A node's advertised capacity, `{CPU: cores, Memory: bytes, Disk: bytes, GPU: count}`; a resource
        the node does not declare is not limited."""
        def amount(key: str) -> float:
            value = capacity.get(key)
            return math.inf if value is None else float(value)

        return cls(amount("CPU"), amount("Memory"), amount("Disk"), amount("GPU"))


class Node(Protocol):
    """What placement reads of a node (a `NodeRecord`, or a row of its table)."""

    id: str
    capacity: dict[str, Any]
    engines: list[str]
    publishers: list[str]
    storage_sources: list[str]
    labels: dict[str, str]


@dataclass(frozen=True)
class Needs:
    """What a task asks of a node."""

    engine: str
    publisher: str
    sources: frozenset[str]
    constraints: tuple[dict[str, Any], ...]
    preferences: tuple[dict[str, Any], ...]
    resources: Resources

    @classmethod
    def of(cls, spec: Mapping[str, Any], default_cpu: str, default_memory: str) -> Needs:
        """From a stored job spec (PascalCase); unset CPU and memory take the server defaults."""
        task = spec["Tasks"][0]
        requested = task.get("Resources") or {}
        resources = Resources(
            cpu=parse_cpu(requested.get("CPU") or default_cpu),
            memory=parse_bytes(requested.get("Memory") or default_memory),
            disk=parse_bytes(requested["Disk"]) if requested.get("Disk") else 0,
            gpu=int(requested.get("GPU") or 0),
        )
        constraints = spec.get("Constraints") or []
        return cls(
            engine=task["Engine"]["Type"],
            publisher=(task.get("Publisher") or {}).get("Type") or "s3managed",
            sources=frozenset(source["Source"]["Type"] for source in task.get("InputSources") or []),
            constraints=tuple(c for c in constraints if not c["Key"].startswith(PREFERENCE_PREFIX)),
            preferences=tuple(c | {"Key": c["Key"][len(PREFERENCE_PREFIX):]} for c in constraints
                              if c["Key"].startswith(PREFERENCE_PREFIX)),
            resources=resources,
        )


def matches(constraint: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes-style label requirement: `= == != in notin exists ! gt lt`."""
    key, op, values = constraint["Key"], constraint["Operator"], list(constraint.get("Values") or [])
    present = key in labels
    value = labels.get(key, "")
    if op in ("=", "=="):
        return present and value == values[0]
    if op == "!=":
        return not present or value != values[0]
    if op == "in":
        return present and value in values
    if op == "notin":
        return not present or value not in values
    if op == "exists":
        return present
    if op == "!":
        return not present
    if op in ("gt", "lt"):
        try:
            number, bound = float(value), float(values[0])
        except ValueError:
            return False
        return present and (number > bound if op == "gt" else number < bound)
    return False


def describe(constraint: Mapping[str, Any]) -> str:
    values = constraint.get("Values") or []
    op = constraint["Operator"]
    if op in ("exists", "!"):
        return f"{'!' if op == '!' else ''}{constraint['Key']}"
    if op in ("in", "notin"):
        return f"{constraint['Key']} {op} ({', '.join(values)})"
    return f"{constraint['Key']}{op if op not in ('gt', 'lt') else ' ' + op + ' '}{values[0]}"


def unsuitable(node: Node, needs: Needs, free: Resources) -> list[str]:
    """Why this node, with `free` resources, cannot run the task."""
    reasons = []
    if needs.engine not in node.engines:
        reasons.append(f"does not support {needs.engine}, only {', '.join(node.engines) or 'no engine'}")
    if needs.publisher not in node.publishers:
        reasons.append(f"does not support publisher {needs.publisher}")
    missing = sorted(needs.sources - set(node.storage_sources))
    if missing:
        reasons.append(f"does not support input source {', '.join(missing)}")
    for constraint in needs.constraints:
        if not matches(constraint, node.labels):
            reasons.append(f"does not match constraint {describe(constraint)}")
    wanted = needs.resources
    for name, asked, left, unit in (("CPU", wanted.cpu, free.cpu, ""), ("memory", wanted.memory, free.memory, " B"),
                                    ("disk", wanted.disk, free.disk, " B"), ("GPU", wanted.gpu, free.gpu, "")):
        if exceeds(asked, left):
            reasons.append(f"not enough {name}: requested {asked:g}{unit}, available {max(left, 0):g}{unit}")
    return reasons


def not_enough_nodes(requested: int, reasons: Mapping[str, list[str]]) -> str:
    """Bacalhau's scheduling error: one line per node that cannot run the job."""
    suitable = sum(1 for why in reasons.values() if not why)
    lines = [f"not enough nodes to run job. requested: {requested}, available: {len(reasons)}, "
             f"suitable: {suitable}."]
    lines += [f"• Node {node}: {'; '.join(why)}" for node, why in sorted(reasons.items()) if why]
    if not reasons:
        lines.append("• no compute node is connected and approved")
    return "\n".join(lines)
