"""Logs: agents append chunks while a task runs; users read or follow them.

`GET /api/v1/orchestrator/jobs/{ref}/logs` (`execution_id`, `follow`, `tail`) answers, by what the client asks:
plain text (curl), NDJSON (`Accept: application/x-ndjson` or `format=ndjson`), Server-Sent Events
(`Accept: text/event-stream`), or a WebSocket of Bacalhau's `{"value": {"Type": 1|2, "Line": …}}` messages.
Lines carry `Type` 1 for stdout and 2 for stderr, as Bacalhau's `ExecutionLog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.auth import visible_namespace
from gateway.errors import BadRequest, GatewayError, NotFound, PayloadTooLarge
from gateway.log_store import STREAMS, parse_chunks
from gateway.models import ExecutionRecord, ExecutionState
from gateway.responses import JSONResponse
from gateway.services import Services, calling_node, query_int, read_json, services

LINE_TYPES = {"stdout": 1, "stderr": 2}
_PREFERRED = (ExecutionState.RUNNING, ExecutionState.PUBLISHING, ExecutionState.BID_ACCEPTED,
              ExecutionState.COMPLETED)


async def append(request: Request) -> JSONResponse:
    """Agent side: `{Chunks: [{Stream, Offset, Data}]}`, offsets counted in characters of each stream."""
    svc = services(request)
    node = await calling_node(request)
    body = await read_json(request, limit=2 << 20)
    chunks = parse_chunks(body.get("Chunks"))
    kept, capped = await svc.db(svc.logs.append, node.id, request.path_params["id"], chunks)
    if kept:
        svc.new_logs.notify()
    if capped:
        raise PayloadTooLarge(f"the execution's logs reached the {svc.logs.max_bytes}-character limit; "
                              "the rest is in its published stdout and stderr")
    return JSONResponse({"Kept": kept})


async def _execution(connection: HTTPConnection) -> ExecutionRecord:
    """The execution named by `execution_id` (or its prefix), else the job's most relevant current one."""
    svc = services(connection)
    job = await svc.db(svc.store.find_job, visible_namespace(connection), connection.path_params["ref"])
    executions = await svc.db(svc.store.executions, job.id)
    wanted = connection.query_params.get("execution_id", "")
    if wanted:
        matches = [e for e in executions if e.id.startswith(wanted)]
        if len(matches) != 1:
            raise NotFound(f"job {job.id} has no execution {wanted}") if not matches else BadRequest(
                f"execution ID prefix {wanted!r} is ambiguous")
        return matches[0]
    current = [e for e in executions if e.job_version == job.version] or executions
    if not current:
        raise NotFound(f"job {job.id} has no executions yet")
    rank = {state: index for index, state in enumerate(_PREFERRED)}
    return min(current, key=lambda e: (rank.get(ExecutionState(e.compute_state), len(rank)), -e.create_time))


async def _lines(svc: Services, execution: ExecutionRecord, *, follow: bool, tail: int) -> AsyncIterator[
        tuple[str, str]]:
    """(stream, line) pairs in the order they were shipped; with `follow`, until the execution has ended."""
    partial = dict.fromkeys(STREAMS, "")
    backlog: list[tuple[str, str]] = []
    after, live = 0, False
    while True:
        signal = svc.new_logs.current()
        ended = ExecutionState(await svc.db(svc.store.execution_state, execution.id)).terminal
        rows = await svc.db(svc.logs.read, execution.id, after)
        for row in rows:
            after = row.seq or after
            *complete, partial[row.stream] = (partial[row.stream] + row.data).split("\n")
            for line in complete:
                if live:
                    yield row.stream, line
                else:
                    backlog.append((row.stream, line))
        if rows:
            continue
        if not live:  # the history so far, or its last `tail` lines
            for item in backlog[-tail:] if tail else backlog:
                yield item
            live = True
        if not follow or ended:
            for stream in STREAMS:
                if partial[stream]:
                    yield stream, partial[stream]
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signal.wait(), 1.0)


def _options(connection: HTTPConnection) -> tuple[bool, int]:
    follow = connection.query_params.get("follow", "").lower() in ("1", "true", "yes")
    return follow, query_int(connection, "tail", 0, maximum=1_000_000)


def _entry(stream: str, line: str) -> dict[str, Any]:
    return {"Type": LINE_TYPES[stream], "Stream": stream, "Line": line}


async def read_logs(request: Request) -> StreamingResponse:
    svc = services(request)
    follow, tail = _options(request)
    execution = await _execution(request)
    accept = request.headers.get("accept", "")
    kind = request.query_params.get("format") or (
        "sse" if "text/event-stream" in accept else "ndjson" if "ndjson" in accept else "text")
    if kind not in ("text", "ndjson", "sse"):
        raise BadRequest("format: must be text, ndjson or sse")

    async def body() -> AsyncIterator[str]:
        async for stream, line in _lines(svc, execution, follow=follow, tail=tail):
            entry = _entry(stream, line) | {"ExecutionID": execution.id}
            if kind == "sse":
                yield f"event: log\ndata: {json.dumps(entry)}\n\n"
            elif kind == "ndjson":
                yield json.dumps(entry) + "\n"
            else:
                yield line + "\n"

    media = {"sse": "text/event-stream", "ndjson": "application/x-ndjson", "text": "text/plain; charset=utf-8"}[kind]
    return StreamingResponse(body(), media_type=media, headers={"X-Execution-ID": execution.id})


async def stream_logs(websocket: WebSocket) -> None:
    """Bacalhau's log WebSocket: one JSON message per line, then a normal close."""
    await websocket.accept()
    try:
        follow, tail = _options(websocket)
        execution = await _execution(websocket)
        async for stream, line in _lines(services(websocket), execution, follow=follow, tail=tail):
            await websocket.send_json({"value": _entry(stream, line), "error": ""})
    except GatewayError as exc:
        await websocket.send_json({"error": exc.message})
    except WebSocketDisconnect:
        return
    await websocket.close(code=1000)


routes = [
    Route("/api/v1/compute/executions/{id}/logs", append, methods=["POST"]),
    Route("/api/v1/orchestrator/jobs/{ref}/logs", read_logs, methods=["GET"]),
    WebSocketRoute("/api/v1/orchestrator/jobs/{ref}/logs", stream_logs),
]
