"""What every endpoint needs: the shared services, and request bodies read within their limits."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import URL
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request

from gateway.audit import AuditLog
from gateway.auth import Authenticator, is_loopback
from gateway.completers import RecentCompleters
from gateway.errors import BadRequest, PayloadTooLarge, Unauthorized
from gateway.log_store import LogStore
from gateway.models import NodeRecord
from gateway.notify import WorkSignal
from gateway.objectstore import ObjectStore
from gateway.poll_deadlines import PollDeadlines
from gateway.settings import Settings
from gateway.store import Store

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Services:
    """Built once by `create_app` and reached from a request as `services(request)`."""

    settings: Settings
    store: Store
    logs: LogStore
    objects: ObjectStore
    work: WorkSignal
    new_logs: WorkSignal
    auth: Authenticator
    audit: AuditLog
    deadlines: PollDeadlines = field(default_factory=PollDeadlines)
    completers: RecentCompleters = field(default_factory=RecentCompleters)
    db_on_loop: bool = False  # see db() and database_on_loop()

    async def db(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a call that works on the database (the store, the log store, the audit log, the token store) and
        checks nothing slow such as a bcrypt password (those stay in worker threads): on the event loop itself or
        in a worker thread, as `database_on_loop` decided."""
        if self.db_on_loop:
            return call(*args, **kwargs)
        return await run_in_threadpool(call, *args, **kwargs)


def database_on_loop(calls: str, url: URL) -> bool:
    """Whether the gateway runs its transactions on the event loop (`calls` is the database_calls setting).

    `auto` runs them there when the database is on this machine: SQLite, or PostgreSQL over a Unix socket or a
    loopback address. Such a transaction takes a millisecond or two and waits on nothing far, and one at a time
    finishes sooner than many taking turns: the hop to a worker thread and back (two thread wake-ups and GIL
    hand-offs) cost the gateway about a fifth of its CPU per job on SQLite, and on PostgreSQL, with forty worker
    threads' transactions interleaved, each waited most of its time for its own thread to run again. The price
    is that a transaction that waits (on a row lock another replica holds) holds up the replica's other
    requests meanwhile, as SQLite's write lock does anyway. A PostgreSQL server elsewhere answers each statement
    after a network round trip: there `auto` uses worker threads, so that transactions wait side by side."""
    if calls != "auto":
        return calls == "loop"
    if url.get_backend_name() == "sqlite":
        return True
    host = url.host or str(url.query.get("host") or "")
    return not host or host.startswith("/") or is_loopback(host)


def services(request: HTTPConnection) -> Services:
    result: Services = request.app.state.services
    return result


def bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def calling_node(request: Request) -> NodeRecord:
    """The node whose credential the request carries (agent API)."""
    credential = bearer(request)
    if not credential:
        raise Unauthorized("the agent API needs the node credential as a Bearer token")
    svc = services(request)
    node = svc.store.remembered_node(credential)  # most calls: no database
    return node if node is not None else await svc.db(svc.store.authenticate_node, credential)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is over the {limit}-byte limit")
    return bytes(body)


async def read_json(request: Request, limit: int = 1 << 20) -> dict[str, Any]:
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def query_int(request: HTTPConnection, name: str, default: int, *, minimum: int = 0, maximum: int = 10_000) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: must be a whole number, not {raw!r}") from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name}: must be between {minimum} and {maximum}")
    return value
