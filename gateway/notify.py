"""Wakes waiting long-polls (and log followers) as soon as there may be something for them, instead of a
fixed sleep: within one process through `WorkSignal`, and between gateway replicas on one PostgreSQL through
LISTEN/NOTIFY (`PgRelay`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger("shoal.gateway.notify")
COALESCE = 64  # distinct wake-ups a relay sends at once; past that, one that wakes everything


class Waiter:
    """One waiting long-poll: the node it is for, the engines it runs, and how much it may take (`limit` and
    `slots`, as its claim would take them)."""

    def __init__(self, node_id: str, engines: frozenset[str], limit: int, slots: int | None) -> None:
        self.node_id, self.engines, self.limit, self.slots = node_id, engines, limit, slots
        self.woken = False  # since it last looked for work (`arm`)
        self._waker: asyncio.Future[None] | None = None  # ends its `wait`
        self.chain: _Chain | None = None  # the wake-up that woke it, to pass on when it found nothing
        self._handoff: asyncio.Future[list[Any]] | None = None  # what a submission is claiming for it

    def book(self) -> bool:
        """Reserve it for a submission's claim (`WorkSignal.reserve`); False when one has already."""
        if self._handoff is not None:
            return False
        self._handoff = asyncio.get_running_loop().create_future()
        return True

    def hand(self, claimed: list[Any]) -> None:
        """What the submission that reserved it (`WorkSignal.reserve`) claimed for it; wakes it."""
        if self._handoff is not None and not self._handoff.done():
            self._handoff.set_result(claimed)
        self.wake()

    def wake(self) -> None:
        """Ends its wait, or the next one if it is not waiting: there may be something for it."""
        self.woken = True
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)

    async def handed(self) -> list[Any]:
        """What a submission claimed for it since it last asked: once a submission has reserved it, whatever
        else ended its wait, the poll answers with this (what was claimed is its node's now)."""
        if self._handoff is None:
            return []
        try:
            return await self._handoff
        finally:
            self._handoff = None

    def arm(self) -> None:
        """Before each look for work: a wake-up from now on ends the next wait."""
        self.woken = False

    def took_work(self) -> None:
        self.chain = None

    async def wait(self, timeout: float) -> bool:
        """Until woken (True) or `timeout` seconds have passed (False). A wake-up resumes the poll at the loop's
        next turn: a submission that woke it can let its answer go out first (see jobs_api.submit)."""
        if not self.woken:
            loop = asyncio.get_running_loop()
            self._waker = loop.create_future()
            timer = loop.call_later(timeout, _end, self._waker)
            try:
                await self._waker
            finally:
                timer.cancel()
                self._waker = None
        return self.woken

    def found_nothing(self) -> None:
        """It was woken for new work but could take none of it (a constraint it does not meet, or another poll
        was quicker): the next waiter of that wake-up gets its turn."""
        if self.chain is not None:
            self.chain.advance(1)
            self.chain = None


def _end(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


class _Chain:
    """The waiters one piece of new work may be for, longest waiting first; each is woken at most once."""

    def __init__(self, waiters: list[Waiter]) -> None:
        self.waiters, self.next = waiters, 0

    def advance(self, count: int) -> None:
        while count > 0 and self.next < len(self.waiters):
            waiter = self.waiters[self.next]
            self.next += 1
            if not waiter.woken:
                waiter.chain = self
                waiter.wake()
                count -= 1


class WorkSignal:
    """Wake-ups within one process, also passed to the other replicas when a relay is attached.

    Long-polls wait as `Waiter`s (`waiting()`) and are woken by what concerns them: new work for their engines
    (`notify(engines=…, count=n)` wakes the n longest-waiting polls that run one of them, and each woken poll
    that finds nothing passes its turn on, so work that only some nodes may take still reaches them), or news
    for their node (`notify(nodes=…)`: a slot freed, an execution to cancel). `notify()` with neither wakes
    every poll. A submission may instead claim for polls waiting here in its own transaction (`reserve`). Log
    followers take `current()` before they look, then wait on it; every notify sets it.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._event = asyncio.Event()
        self._waiters: dict[Waiter, None] = {}  # in the order they started waiting
        self.relay: Callable[[str, str], None] | None = None

    def current(self) -> asyncio.Event:
        return self._event

    @contextlib.contextmanager
    def waiting(self, node_id: str, engines: Iterable[str], limit: int = 0,
                slots: int | None = None) -> Iterator[Waiter]:
        waiter = Waiter(node_id, frozenset(engines), limit, slots)
        self._waiters[waiter] = None
        try:
            yield waiter
        finally:
            del self._waiters[waiter]
            waiter.found_nothing()  # a wake-up it got but did not act on goes to the next one

    def reserve(self, engine: str, count: int) -> list[Waiter]:
        """Up to `count` polls waiting here that run `engine` and are not woken yet, longest waiting first, for a
        submission to claim for in its own transaction and hand what it took (`Waiter.hand`, which it must call for
        each, also when it fails): their answers need no transaction of their own."""
        chosen: list[Waiter] = []
        for waiter in self._waiters:
            if len(chosen) == count:
                break
            if engine in waiter.engines and not waiter.woken and waiter.book():
                chosen.append(waiter)
        return chosen

    def notify(self, *, engines: Iterable[str] = (), count: int | None = None, nodes: Iterable[str] = ()) -> None:
        engines, nodes = sorted(set(engines)), sorted(set(nodes))
        self.wake(engines, count, nodes)
        if self.relay is not None:
            payload = json.dumps({"e": engines, "c": count, "n": nodes}) if engines or nodes else ""
            self.relay(self.channel, payload)

    def receive(self, payload: str) -> None:
        """A wake-up from another replica (or, empty, one that wakes everything)."""
        try:
            message = json.loads(payload) if payload else {}
            engines, count, nodes = list(message.get("e") or []), message.get("c"), list(message.get("n") or [])
        except (ValueError, AttributeError):
            engines, count, nodes = [], None, []
        self.wake(engines, count if isinstance(count, int) else None, nodes)

    def wake(self, engines: list[str] | None = None, count: int | None = None, nodes: list[str] | None = None) -> None:
        """Wake locally: see the class."""
        self._event.set()
        self._event = asyncio.Event()
        if not engines and not nodes:
            for waiter in self._waiters:
                waiter.wake()
            return
        for waiter in self._waiters:
            if waiter.node_id in (nodes or ()):
                waiter.wake()
        if engines:
            wanted = set(engines)
            chain = _Chain([w for w in self._waiters if w.engines & wanted and not w.woken])
            chain.advance(len(chain.waiters) if count is None else count)


class PgRelay:
    """Carries signals between replicas: `send(channel, payload)` queues a NOTIFY (sent by a thread, so the event
    loop never waits on the database); a listener thread hands every NOTIFY it hears to the local signal, and
    wakes them all after it reconnects, since it may have missed some."""

    def __init__(self, dsn: str, signals: list[WorkSignal], loop: asyncio.AbstractEventLoop) -> None:
        self.dsn = dsn
        self.signals = {signal.channel: signal for signal in signals}
        self.loop = loop
        self._outbox: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._listen, daemon=True, name="pg-listen"),
                         threading.Thread(target=self._send_loop, daemon=True, name="pg-notify")]

    def start(self) -> None:
        for signal in self.signals.values():
            signal.relay = self.send
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        for signal in self.signals.values():
            signal.relay = None
        for thread in self._threads:
            thread.join(timeout=5)

    def send(self, channel: str, payload: str = "") -> None:
        self._outbox.put((channel, payload))

    def _wake(self, channel: str | None = None, payload: str = "") -> None:
        chosen = [self.signals[channel]] if channel in self.signals else list(self.signals.values())
        for signal in chosen:
            self.loop.call_soon_threadsafe(signal.receive, payload)

    def _send_loop(self) -> None:
        import psycopg

        connection: psycopg.Connection[tuple[object, ...]] | None = None
        while not self._stop.is_set():
            first = self._outbox.get()
            if first is None:
                break
            pending = {first}
            while not self._outbox.empty():  # coalesce a burst: each distinct wake-up once
                more = self._outbox.get_nowait()
                if more is None:
                    self._stop.set()
                    break
                pending.add(more)
            if len(pending) > COALESCE:  # a storm of wake-ups: one that wakes everything per channel does
                pending = {(channel, "") for channel, _ in pending}
            try:
                if connection is None or connection.closed:
                    connection = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                for channel, payload in pending:
                    connection.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            except psycopg.Error as exc:
                log.warning("could not notify the other replicas: %s", exc)
                connection = None
        if connection is not None:
            connection.close()

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as connection:
                    for channel in self.signals:
                        connection.execute(f'LISTEN "{channel}"')
                    self._wake()  # anything sent while this replica was not listening
                    while not self._stop.is_set():
                        for notice in connection.notifies(timeout=1.0):
                            self._wake(notice.channel, notice.payload)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("lost the database's notifications, listening again: %s", exc)
                    self._stop.wait(1.0)
