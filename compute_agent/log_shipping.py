"""Log shipping: the task's stdout and stderr are tailed while it runs and sent to the gateway in ordered
chunks, so users can follow them live. Offsets count characters of each decoded stream."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging

from compute_agent.errors import GatewayError
from compute_agent.gateway_client import GatewayClient
from compute_agent.task_output import TaskOutput

log = logging.getLogger("shoal.agent.logs")

INTERVAL = 0.25
MAX_CHUNK = 32 << 10
MAX_BATCH = 256 << 10  # characters per request: well inside the gateway's body limit, even JSON-escaped
MAX_INLINE = 32 << 10  # characters the completion may carry instead of a request of their own


class _Tail:
    def __init__(self, output: TaskOutput) -> None:
        self.output = output
        self.position = 0  # bytes read from the stream
        self.offset = 0  # characters shipped
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""

    def read(self, final: bool) -> None:
        data = self.output.read(self.position) if self.output.size > self.position else b""
        self.position += len(data)
        self.pending += self.decoder.decode(data, final=final)


class LogShipper:
    """Tails `{stream: output}` for one execution until `close()`; a refusal from the gateway (the log cap,
    the execution gone) stops shipping, never the task."""

    def __init__(self, gateway: GatewayClient, execution_id: str, outputs: dict[str, TaskOutput]) -> None:
        self._gateway = gateway
        self._execution_id = execution_id
        self._tails = {stream: _Tail(output) for stream, output in outputs.items()}
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._refused = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop tailing (letting a request in flight finish) and ship what is left."""
        await self._stop()
        await self._ship(final=True)

    async def finish(self) -> list[dict[str, object]]:
        """Stop tailing and hand back what is left, for the completion to carry, when it is at most MAX_INLINE
        characters (a short task's whole output, usually); anything more is shipped as `close()` ships it."""
        await self._stop()
        for tail in self._tails.values():
            tail.read(final=True)
        if self._refused or sum(len(tail.pending) for tail in self._tails.values()) > MAX_INLINE:
            await self._ship(final=True)
            return []
        return self._batch()

    async def _stop(self) -> None:
        self._closing.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), INTERVAL)
            if self._closing.is_set():  # what is left goes with close() or finish()
                return
            await self._ship(final=False)

    async def _ship(self, final: bool) -> None:
        for tail in self._tails.values():
            tail.read(final)
        while not self._refused and (chunks := self._batch()):
            try:
                await self._gateway.logs(self._execution_id, chunks)
            except GatewayError as exc:
                if exc.status in (0,) or exc.status >= 500:
                    self._requeue(chunks)  # sent again with the next batch; the gateway drops duplicates
                    return
                log.warning("logs of %s are no longer accepted: %s", self._execution_id, exc)
                self._refused = True

    def _batch(self) -> list[dict[str, object]]:
        """The next request's chunks, at most MAX_BATCH characters, taken from the pending text."""
        chunks: list[dict[str, object]] = []
        room = MAX_BATCH
        for stream, tail in self._tails.items():
            while tail.pending and room > 0:
                size = min(MAX_CHUNK, room)
                data, tail.pending = tail.pending[:size], tail.pending[size:]
                chunks.append({"Stream": stream, "Offset": tail.offset, "Data": data})
                tail.offset += len(data)
                room -= len(data)
        return chunks

    def _requeue(self, chunks: list[dict[str, object]]) -> None:
        for stream, tail in self._tails.items():
            mine = [c for c in chunks if c["Stream"] == stream]
            if mine:
                tail.pending = "".join(str(c["Data"]) for c in mine) + tail.pending
                tail.offset = int(str(mine[0]["Offset"]))
