"""The gateway freezes what has lived a while out of the collector's full passes, and thaws and collects it all
from time to time, so that garbage in reference cycles is still freed."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from gateway import gc_freezer
from tests.conftest import wait_until


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _frozen(obj: object) -> bool:
    return gc.is_tracked(obj) and not any(tracked is obj for tracked in gc.get_objects())


def test_a_frozen_cycle_outlives_full_passes_until_everything_is_thawed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_freezer, "FREEZE_SECONDS", 0.02)
    monkeypatch.setattr(gc_freezer, "THAW_SECONDS", 3600.0)

    async def scenario() -> None:
        freezer = asyncio.create_task(gc_freezer.run_forever())
        try:
            held = [_Cycle()]
            gone = weakref.ref(held[0])
            await wait_until(lambda: _frozen(held[0]), "the new object to be frozen")
            held.clear()
            gc.collect()
            assert gone() is not None, "a full pass walked a frozen object"
            monkeypatch.setattr(gc_freezer, "THAW_SECONDS", 0.0)
            await wait_until(lambda: gone() is None, "the thaw to collect the cycle")
        finally:
            freezer.cancel()
            gc.unfreeze()

    asyncio.run(scenario())
