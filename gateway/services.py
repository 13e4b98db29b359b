"""What every endpoint needs: the shared services, and request bodies read within their limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.notify import WorkSignal
from gateway.objectstore import ObjectStore
from gateway.settings import Settings
from gateway.store import Store


@dataclass
class Services:
    """Built once by `create_app` and reached from a request as `services(request)`."""

    settings: Settings
    store: Store
    objects: ObjectStore
    work: WorkSignal


def services(request: Request) -> Services:
    result: Services = request.app.state.services
    return result


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


def query_int(request: Request, name: str, default: int, *, minimum: int = 0, maximum: int = 10_000) -> int:
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
