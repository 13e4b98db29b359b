"""Completions go to the gateway several to a request while other nodes share it.

The gateway says so in its answers (`Gather`). Then one request is on its way at a time, and what ends meanwhile
goes with the next; a completion also waits a little (at most GATHER seconds) for the node's other running
executions, so that tasks which started together report together: with two slots and tiny tasks, every request
carries two completions instead of one, and the gateway's work per request (the HTTP exchange, its transaction,
the node's lock, the claim) is shared by both. An agent alone on its gateway sends each completion at once, beside
the others: its requests then overlap with its tasks, which waiting for each other would stop. Either way, the
answer brings the executions taken for the freed slots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from compute_agent.errors import GatewayError
from compute_agent.gateway_client import GatewayClient

GATHER = 0.002  # seconds a completion waits at most for the node's other running executions
MAX_BATCH_BYTES = 1 << 20  # of completions in one request (one more that alone is larger goes on its own)

_Waiting = tuple[bytes, str, asyncio.Future[None]]  # a completion's JSON, its execution, its report's answer


class Completions:
    """`report` sends one execution's completion, with others, and returns once the gateway recorded it (or
    raises GatewayError when it refused it or could not be reached). `running()` counts the executions the node
    holds, those waiting here and for a slot included; `take` starts what the gateway assigned for the freed
    slots. `slots` is sent along (None when the agent stops: nothing is taken then). `gather` is how completions
    go until the gateway's first answer says."""

    def __init__(self, gateway: GatewayClient, *, running: Callable[[], int],
                 take: Callable[[list[dict[str, Any]]], Awaitable[None]], slots: Callable[[], int | None],
                 gather: bool = False) -> None:
        self._gateway = gateway
        self._running, self._take, self._slots = running, take, slots
        self._waiting: list[_Waiting] = []
        self._changed = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._gather = gather  # as the gateway's last answer said

    async def report(self, execution_id: str, completion: dict[str, Any]) -> None:
        item: _Waiting = (orjson.dumps(completion | {"ExecutionID": execution_id}), execution_id,
                          asyncio.get_running_loop().create_future())
        if not self._gather:
            await self._send([item])
        else:
            self._waiting.append(item)
            self.changed()
            if self._sender is None or self._sender.done():
                self._sender = asyncio.create_task(self._send_waiting())
        await item[2]

    def changed(self) -> None:
        """An execution ended or is waiting here: the gathering looks again."""
        self._changed.set()

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        for _, _, done in self._waiting:
            done.cancel()

    async def _send_waiting(self) -> None:
        while self._waiting:
            await self._gather_others()
            if batch := self._batch():
                await self._send(batch)

    async def _send(self, batch: list[_Waiting]) -> None:
        """One request: each completion's report is answered, and what the gateway took for the slots starts."""
        try:
            reply = await self._gateway.complete_all([item for item, _, _ in batch], self._slots())
        except GatewayError as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        self._gather = bool(reply.get("Gather"))
        rejected = {r.get("ExecutionID"): r for r in reply.get("Rejected") or []}
        for _, execution_id, done in batch:
            if done.done():
                continue
            if execution_id in rejected:
                refusal = rejected[execution_id]
                done.set_exception(GatewayError(f"/completions: {refusal.get('Message')}",
                                                int(refusal.get("Status") or 0)))
            else:
                done.set_result(None)
        await self._take(list(reply.get("Executions") or []))

    async def _gather_others(self) -> None:
        """Until every running execution is waiting here, or GATHER seconds have passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GATHER):
                while len(self._waiting) < self._running():
                    self._changed.clear()
                    await self._changed.wait()

    def _batch(self) -> list[_Waiting]:
        """The completions still awaited (an execution cancelled meanwhile is not reported), up to
        MAX_BATCH_BYTES; the rest wait for the next request."""
        batch: list[_Waiting] = []
        size = 0
        while self._waiting:
            item = self._waiting[0]
            if item[2].done():
                self._waiting.pop(0)
                continue
            if batch and size + len(item[0]) > MAX_BATCH_BYTES:
                break
            batch.append(self._waiting.pop(0))
            size += len(item[0])
        return batch
