"""Serves the embedded object store: presigned GET and PUT at `/api/v1/objects/<key>`."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from gateway.errors import BadRequest, NotFound
from gateway.objectstore.local import OBJECTS_PATH, LocalObjectStore
from gateway.responses import JSONResponse
from gateway.services import services


def _store(request: Request) -> LocalObjectStore:
    store = services(request).objects
    if not isinstance(store, LocalObjectStore):
        raise NotFound("this gateway keeps results in S3, not in its own object store")
    return store


async def get_object(request: Request) -> Response:
    store = _store(request)
    key = request.path_params["key"]
    store.verify("GET", key, dict(request.query_params))
    path = await run_in_threadpool(store.open, key)
    return FileResponse(path, media_type="application/gzip", filename=key.rsplit("/", 1)[-1])


async def put_object(request: Request) -> Response:
    store = _store(request)
    key = request.path_params["key"]
    query = dict(request.query_params)
    store.verify("PUT", key, query)
    try:
        size = int(query["size"])
    except (KeyError, ValueError):
        raise BadRequest("the URL carries no signed size") from None
    await store.write(key, request.stream(), size, query.get("sha256", ""))
    return JSONResponse({"Key": key, "Size": size}, status_code=200)


routes = [
    Route(OBJECTS_PATH + "{key:path}", get_object, methods=["GET"]),
    Route(OBJECTS_PATH + "{key:path}", put_object, methods=["PUT"]),
]
