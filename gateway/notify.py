"""Wakes waiting long-polls (and log followers) as soon as there may be something for them, instead of a
fixed sleep: within one process through `WorkSignal`, and between gateway replicas on one PostgreSQL through
LISTEN/NOTIFY (`PgRelay`)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("shoal.gateway.notify")


class WorkSignal:
    """A broadcast within one process: take `current()` before looking for work, then wait on it.
    `notify()` also tells the other replicas when a relay is attached; `wake()` is local only."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._event = asyncio.Event()
        self.relay: Callable[[str], None] | None = None

    def current(self) -> asyncio.Event:
        return self._event

    def wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.wake()
        if self.relay is not None:
            self.relay(self.channel)


class PgRelay:
    """Carries signals between replicas: `send(channel)` queues a NOTIFY (sent by a thread, so the event loop
    never waits on the database); a listener thread wakes the local signal of every NOTIFY it hears, and wakes
    them all after it reconnects, since it may have missed some."""

    def __init__(self, dsn: str, signals: list[WorkSignal], loop: asyncio.AbstractEventLoop) -> None:
        self.dsn = dsn
        self.signals = {signal.channel: signal for signal in signals}
        self.loop = loop
        self._outbox: queue.Queue[str | None] = queue.Queue()
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

    def send(self, channel: str) -> None:
        self._outbox.put(channel)

    def _wake(self, channel: str | None = None) -> None:
        chosen = [self.signals[channel]] if channel in self.signals else list(self.signals.values())
        for signal in chosen:
            self.loop.call_soon_threadsafe(signal.wake)

    def _send_loop(self) -> None:
        import psycopg

        connection: psycopg.Connection[tuple[object, ...]] | None = None
        while not self._stop.is_set():
            channel = self._outbox.get()
            if channel is None:
                break
            pending = {channel}
            while not self._outbox.empty():  # coalesce a burst into one NOTIFY per channel
                more = self._outbox.get_nowait()
                if more is None:
                    self._stop.set()
                    break
                pending.add(more)
            try:
                if connection is None or connection.closed:
                    connection = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                for name in pending:
                    connection.execute("SELECT pg_notify(%s, '')", (name,))
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
                            self._wake(notice.channel)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("lost the database's notifications, listening again: %s", exc)
                    self._stop.wait(1.0)
