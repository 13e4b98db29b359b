"""`/api/v1/agent/…`: is the gateway alive, which version is it, and how is it configured (secrets redacted)."""

from __future__ import annotations

import dataclasses
import platform
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from gateway.responses import JSONResponse
from gateway.services import services
from shoal import __version__


async def alive(_: Request) -> JSONResponse:
    return JSONResponse({"Status": "OK"})


async def version(_: Request) -> JSONResponse:
    major, minor = __version__.split(".")[:2]
    return JSONResponse({
        "Major": major,
        "Minor": minor,
        "GitVersion": f"v{__version__}",
        "GitCommit": "",
        "BuildDate": "",
        "GOOS": sys.platform,
        "GOARCH": platform.machine(),
    })


async def node(request: Request) -> JSONResponse:
    """This gateway as Bacalhau describes its orchestrator node."""
    settings = services(request).settings
    return JSONResponse({"NodeID": f"gateway-{settings.host}-{settings.port}", "NodeType": "Requester",
                         "Labels": {}, "BacalhauVersion": {"GitVersion": f"v{__version__}"},
                         "Address": settings.base_url})


async def config(request: Request) -> JSONResponse:
    """The gateway's effective configuration; passwords, API keys and tokens are redacted."""
    svc = services(request)
    shown = {name: value for name, value in dataclasses.asdict(svc.settings).items() if name != "join_token"}
    shown = {name: str(value) if isinstance(value, Path) else value for name, value in shown.items()}
    shown["database_url"] = _without_password(svc.settings.database_url)
    return JSONResponse({"Config": {"Settings": shown, **svc.auth.config.redacted()}})


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:<redacted>@{host}"))


async def to_version(_: Request) -> RedirectResponse:
    return RedirectResponse("/api/v1/agent/version")


routes = [
    Route("/api/v1/agent/alive", alive, methods=["GET"]),
    Route("/api/v1/agent/version", version, methods=["GET"]),
    Route("/api/v1/agent/node", node, methods=["GET"]),
    Route("/api/v1/agent/config", config, methods=["GET"]),
    Route("/livez", alive, methods=["GET"]),
    Route("/", to_version, methods=["GET"]),
    Route("/version", to_version, methods=["GET"]),
]
