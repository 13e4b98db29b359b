"""The gateway app: routes, one error handler for the whole `GatewayError` family, housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import (
    agent_api,
    auth_api,
    compute_api,
    housekeeping,
    jobs_api,
    logs_api,
    nodes_api,
    objects_api,
    openapi,
    uploads_api,
)
from gateway.audit import AuditLog
from gateway.auth import Authenticator, AuthMiddleware, FailureLimiter, is_loopback
from gateway.auth_config import load_auth_config
from gateway.db import Checkpointer, make_engine
from gateway.errors import ConfigurationError, GatewayError, error_body
from gateway.log_store import LogStore
from gateway.notify import PgRelay, WorkSignal
from gateway.objectstore import make_object_store
from gateway.responses import JSONResponse
from gateway.services import Services, database_on_loop
from gateway.settings import Settings
from gateway.store import Store
from gateway.tokens import TokenStore

log = logging.getLogger("shoal.gateway")


def create_app(settings: Settings) -> Starlette:
    """The ASGI app for `settings`: database, object store and housekeeping are set up here, once."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    auth_config = load_auth_config(Path(settings.config) if settings.config else None, join_token=settings.join_token)
    if not auth_config.has_credentials and not is_loopback(settings.host):
        raise ConfigurationError(
            f"refusing to serve on {settings.host} with no credentials configured: anyone could run jobs",
            hint="give users or API keys in a config file (shoal serve --config FILE), or listen on 127.0.0.1")
    engine = make_engine(settings.database)
    svc = Services(
        settings=settings,
        store=Store(engine, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
                    manual_approval=settings.manual_approval, default_cpu=settings.default_cpu,
                    default_memory=settings.default_memory, queue_timeout=settings.queue_timeout,
                    heartbeat_seconds=settings.idle_heartbeat_seconds),
        logs=LogStore(engine, max_bytes_per_execution=settings.max_log_bytes),
        objects=make_object_store(settings),
        work=WorkSignal("shoal_work"),
        new_logs=WorkSignal("shoal_logs"),
        auth=Authenticator(auth_config, TokenStore(engine),
                           limiter=FailureLimiter(settings.auth_failures_per_minute, 60.0)),
        audit=AuditLog(engine),
        db_on_loop=database_on_loop(settings.database_calls, engine.url),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        relay = None
        if engine.dialect.name == "postgresql":  # replicas wake each other's polls and log followers
            dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            relay = PgRelay(dsn, [svc.work, svc.new_logs], asyncio.get_running_loop())
            relay.start()
        checkpointer = Checkpointer.start_for(engine)
        task = asyncio.create_task(housekeeping.run_forever(svc))
        try:
            yield
        finally:
            if relay is not None:
                relay.stop()
            if checkpointer is not None:
                checkpointer.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            engine.dispose()

    app = Starlette(
        routes=[
            *jobs_api.routes,
            *auth_api.routes,
            *logs_api.routes,
            *nodes_api.routes,
            *compute_api.routes,
            *objects_api.routes,
            *uploads_api.routes,
            *openapi.routes,
            *agent_api.routes,
        ],
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error, ClientDisconnect: _gone,
                            Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.services = svc
    app.add_middleware(AuthMiddleware)
    app.add_middleware(RequestID)  # outermost: refusals carry a request ID too
    return app


def _error(request: Request, status: int, message: str, code: str, hint: str = "") -> JSONResponse:
    request_id = getattr(request.state, "request_id", "")
    body = error_body(status, message, code, request_id, hint)
    # a 500 is answered outside the RequestID middleware, so the header is set here too
    return JSONResponse(body, status_code=status, headers={"X-Request-ID": request_id} if request_id else None)


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return _error(request, exc.status, exc.message, exc.code, exc.hint)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return _error(request, exc.status_code, str(exc.detail), "HTTPError")


async def _gone(request: Request, exc: Exception) -> Response:
    """The client went away before its request was read (an agent dropping a poll): nothing to answer, nothing
    went wrong."""
    return Response(status_code=499)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _error(request, 500, "internal server error", "InternalError")


class RequestID:
    """Gives every request an ID, returned as `X-Request-ID` and in error bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)
