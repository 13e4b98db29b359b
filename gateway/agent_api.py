"""`/api/v1/agent/…`: is the gateway alive, and which version is it."""

from __future__ import annotations

import platform
import sys

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

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


async def to_version(_: Request) -> RedirectResponse:
    return RedirectResponse("/api/v1/agent/version")


routes = [
    Route("/api/v1/agent/alive", alive, methods=["GET"]),
    Route("/api/v1/agent/version", version, methods=["GET"]),
    Route("/livez", alive, methods=["GET"]),
    Route("/", to_version, methods=["GET"]),
    Route("/version", to_version, methods=["GET"]),
]
