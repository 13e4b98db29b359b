"""When each idle long-poll ends: spread over time, so that a gateway's idle agents come back at an even rate.

Agents that began polling together (started together, or back after the gateway restarted) would otherwise keep
coming back together, and a job submitted during such a burst waits behind all their heartbeats. An idle poll
ends in the last SPREAD part of its wait, in the latest of the least booked BUCKET_SECONDS slots there: a burst
of polls is spread over that window at once, and once the rate is even each poll waits almost its whole time.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

SPREAD = 0.75
BUCKET_SECONDS = 0.25


class PollDeadlines:
    """The slots booked by the polls of one gateway process that are waiting now (event loop only)."""

    def __init__(self) -> None:
        self._booked: dict[int, int] = {}

    @contextlib.contextmanager
    def booked(self, now: float, wait: float) -> Iterator[float]:
        """The deadline (loop time) of a poll that began at `now` and may wait `wait` seconds; its slot is
        booked until the poll ends."""
        first, last = int((now + wait * (1 - SPREAD)) / BUCKET_SECONDS) + 1, int((now + wait) / BUCKET_SECONDS) - 1
        if last < first:  # too short a wait to choose
            yield now + wait
            return
        booked = self._booked
        slot = min(range(last, first - 1, -1), key=lambda s: booked.get(s, 0))  # the latest of the least booked
        booked[slot] = booked.get(slot, 0) + 1
        try:
            yield (slot + random.random()) * BUCKET_SECONDS
        finally:
            if booked[slot] > 1:
                booked[slot] -= 1
            else:
                del booked[slot]
