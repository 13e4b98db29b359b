"""The node's slots: at most so many tasks run at once; an execution taken ahead of a free slot (the agent's
`--queue`) waits here for one.

    async with slots.hold(endless=False, waiting=launched.set):
        ...  # the task runs

Only a slot that frees is waited for: when every slot is held by a daemon or service task (which runs until it is
stopped), the next task starts beside them instead of waiting for ever. The node then runs more tasks than slots,
but never more than its slots and queue together, which is all the gateway gives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class Slots:
    def __init__(self, count: int) -> None:
        self.count = count
        self._ending = 0  # slots held by tasks that end on their own
        self._endless = 0  # and by daemon or service tasks
        self._freed = asyncio.Condition()

    def _free(self) -> bool:
        return self._ending + self._endless < self.count or not self._ending

    @asynccontextmanager
    async def hold(self, *, endless: bool, waiting: Callable[[], None]) -> AsyncIterator[None]:
        """Hold a slot while the block runs; `waiting` is called first when the task has to wait for it."""
        async with self._freed:
            if not self._free():
                waiting()
                await self._freed.wait_for(self._free)
            if endless:
                self._endless += 1
            else:
                self._ending += 1
        try:
            yield
        finally:
            async with self._freed:
                if endless:
                    self._endless -= 1
                else:
                    self._ending -= 1
                self._freed.notify()
