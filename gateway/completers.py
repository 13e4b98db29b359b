"""Which nodes have reported completions lately, on this replica: when several have, they share the gateway, and
each agent does better to send the completions of its executions together (one request, one transaction, one
claim) than one by one beside each other. An agent alone keeps its executions' completions apart, each going at
once: its requests then overlap with its tasks."""

from __future__ import annotations

WINDOW = 0.05  # seconds a completion counts as recent


class RecentCompleters:
    def __init__(self) -> None:
        self._last: dict[str, float] = {}  # node ID → when it last reported; the least recent first

    def shared(self, node_id: str, now: float) -> bool:
        """Record a node's completions at `now` (a monotonic time); whether another node reported lately too."""
        last = self._last
        last.pop(node_id, None)
        last[node_id] = now
        while (oldest := next(iter(last))) != node_id and now - last[oldest] >= WINDOW:
            del last[oldest]
        return len(last) > 1
