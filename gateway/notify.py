"""Wakes waiting long-polls as soon as there may be work for them, instead of a fixed sleep."""

from __future__ import annotations

import asyncio


class WorkSignal:
    """A broadcast within one process: take `current()` before looking for work, then wait on it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
