"""Managed inputs: `POST /api/v1/uploads` hands out a presigned PUT for a user's file (a WASM module, a
dataset) at `uploads/<namespace>/<id>/<name>`; a job names it as `{Type: managed, Params: {Key}}`, and its
agent fetches it through a presigned GET added to the assignment. Used by `shoal wasm run ./x.wasm` and
`shoal … -i ./file` for files too big to send inline.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import principal
from gateway.errors import BadRequest, NotFound, PayloadTooLarge
from gateway.responses import JSONResponse
from gateway.services import Services, read_json, services
from shoal.spec import Job, SourceType

UPLOADS_PREFIX = "uploads"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


async def create(request: Request) -> JSONResponse:
    """`{Name, Size, SHA256, Namespace?}` → `{URL, Method, Headers, Key, Source}`; the PUT must carry exactly
    that many bytes with that digest, before the URL expires."""
    svc = services(request)
    body = await read_json(request)
    name, size, sha256 = body.get("Name"), body.get("Size"), str(body.get("SHA256", "")).lower()
    namespace = body.get("Namespace") or principal(request).default_namespace
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest("Name: must be a file name of letters, digits, '.', '_' or '-' (at most 128)")
    if not isinstance(namespace, str) or not _NAME.match(namespace):
        raise BadRequest("Namespace: must be letters, digits, '.', '_' or '-'")
    if not principal(request).sees(namespace):
        raise NotFound(f"namespace not found: {namespace}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest("Size: must be a whole number of bytes")
    if size > svc.settings.max_upload_bytes:
        raise PayloadTooLarge(f"Size: uploads are limited to {svc.settings.max_upload_bytes} bytes")
    if not _SHA256.match(sha256):
        raise BadRequest("SHA256: must be the file's SHA-256, 64 hex digits")
    key = f"{UPLOADS_PREFIX}/{namespace}/{uuid.uuid4().hex}/{name}"
    signed = await run_in_threadpool(svc.objects.presign_put, key, size, sha256, svc.settings.upload_expiry)
    return JSONResponse({
        "URL": signed.url, "Method": signed.method, "Headers": signed.headers, "Key": key,
        "ExpiresIn": svc.settings.upload_expiry,
        "Source": {"Type": SourceType.MANAGED.value, "Params": {"Key": key}},
    }, status_code=201)


def has_managed_inputs(job: Job) -> bool:
    return any(source.Source.Type == SourceType.MANAGED for source in job.task.InputSources)


def check_managed_inputs(svc: Services, job: Job) -> None:
    """Every managed input must be an upload of the job's namespace that has arrived; its size and digest
    are recorded in the spec so the agent can check what it fetches."""
    for index, source in enumerate(job.task.InputSources):
        if source.Source.Type != SourceType.MANAGED:
            continue
        field = f"Tasks[0].InputSources[{index}].Source.Params.Key"
        key = source.Source.Params["Key"]
        if not key.startswith(f"{UPLOADS_PREFIX}/{job.Namespace}/"):
            raise BadRequest(f"{field}: {key} is not an upload of namespace {job.Namespace!r}")
        try:
            info = svc.objects.stat(key)
        except NotFound:  # a key the store would never have made
            info = None
        if info is None:
            raise BadRequest(f"{field}: nothing has been uploaded to {key} (PUT the file to the upload URL first)")
        source.Source.Params |= {"Size": info.size, "SHA256": info.sha256 or ""}


def with_input_urls(svc: Services, task: dict[str, Any]) -> dict[str, Any]:
    """The task as its agent receives it: each managed input gains a presigned GET `URL`."""
    sources = task.get("InputSources") or []
    if not any(source["Source"]["Type"] == SourceType.MANAGED for source in sources):
        return task
    copied = []
    for source in sources:
        if source["Source"]["Type"] == SourceType.MANAGED:
            params = dict(source["Source"]["Params"])
            params["URL"] = svc.objects.presign_get(params["Key"], svc.settings.download_expiry)
            source = source | {"Source": source["Source"] | {"Params": params}}
        copied.append(source)
    return task | {"InputSources": copied}


routes = [Route("/api/v1/uploads", create, methods=["POST"])]
