"""The user API for jobs: Bacalhau's orchestrator API v1 (`/api/v1/orchestrator/jobs…`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import difflib
from typing import Any

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from gateway import history, wire
from gateway.auth import principal, visible_namespace
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.models import ExecutionState, JobRecord
from gateway.notify import Waiter
from gateway.redaction import redact_spec
from gateway.responses import JSONResponse
from gateway.services import Services, query_int, read_body, read_json, services
from gateway.uploads_api import check_managed_inputs, has_managed_inputs
from shoal.documents import load_document
from shoal.errors import SpecError
from shoal.selector import parse_selector
from shoal.spec import NODE_BOUND_TYPES, Job, parse_job

_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
MAX_BATCH = 1000  # jobs in one submission
_PARSE_INLINE_BYTES = 256 * 1024  # bodies up to this size are parsed on the event loop (no thread hop)


async def submit(request: Request) -> JSONResponse:
    """One job (`{"Job": …}` or a bare spec), or several in one transaction (`{"Jobs": [...]}`): all of them are
    stored, or none."""
    svc = services(request)
    body = await read_body(request, svc.settings.max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    bare = content_type in _YAML_TYPES
    # a large body (a batch, big inline inputs) is read in a thread: the event loop serves the others meanwhile
    parsed, force, batch = (_jobs(body, bare) if len(body) <= _PARSE_INLINE_BYTES else
                            await run_in_threadpool(_jobs, body, bare))
    jobs = [job for job, _ in parsed]
    for job in jobs:
        _place_in_namespace(request, job)
    if any(has_managed_inputs(job) for job in jobs):  # looked up in the object store
        for job in jobs:
            await run_in_threadpool(check_managed_inputs, svc, job)
    actor = principal(request).name
    handed = _reserve(svc, jobs)
    claims: list[list[Any]] = [[] for _ in handed]  # what each reserved poll is handed, also when this fails
    try:
        records, claims = await svc.db(
            svc.store.submit_claiming, jobs, force=force, actor=actor, batch=batch,
            claim_for=[(waiter.node_id, waiter.limit, waiter.slots) for waiter in handed])
    finally:
        for waiter, claimed in zip(handed, claims, strict=True):
            waiter.hand(claimed)
    if handed:  # the polls it handed work to answer before it does: their tasks start the sooner
        await asyncio.sleep(0)
    _announce(svc, records, taken=sum(len(claimed) for claimed in claims))
    answers = [{"JobID": record.id, "JobVersion": record.version, "EvaluationID": "", "Warnings": warnings}
               for record, (_, warnings) in zip(records, parsed, strict=True)]
    return JSONResponse({"Jobs": answers} if batch else answers[0])


def _reserve(svc: Services, jobs: list[Job]) -> list[Waiter]:
    """Polls waiting on this replica that the submission claims for in its own transaction: as many as its
    executions of the first job's engine, unless one of its jobs is bound to nodes (an ops or daemon job's
    executions are bound as they are made)."""
    if any(job.Type in NODE_BOUND_TYPES for job in jobs):
        return []
    engine = str(jobs[0].task.Engine.Type)
    return svc.work.reserve(engine, sum(job.Count or 0 for job in jobs if str(job.task.Engine.Type) == engine))


def _announce(svc: Services, jobs: list[JobRecord], taken: int = 0) -> None:
    """Wake as many waiting polls of nodes with each job's engine as it has executions to take (all of them for
    an ops or daemon job, whose executions are each bound to a node), less the `taken` the submission claimed for
    polls waiting here (of the first job's engine), and the polls that carry the stops of the versions they
    replaced."""
    wanted: dict[str, int | None] = {}
    for job in jobs:
        engine = str(job.spec["Tasks"][0]["Engine"]["Type"])
        count = None if job.type in NODE_BOUND_TYPES else job.count
        before = wanted.get(engine, 0)
        wanted[engine] = None if before is None or count is None else before + count
    if jobs and taken:
        first = str(jobs[0].spec["Tasks"][0]["Engine"]["Type"])
        wanted[first] = max(0, (wanted[first] or 0) - taken)
    for engine, count in wanted.items():
        if count != 0:
            svc.work.notify(engines=[engine], count=count)
    if any(job.version > 1 for job in jobs):
        svc.work.notify()


def _place_in_namespace(request: Request, job: Job) -> None:
    """A spec without a namespace the caller may use goes to the caller's own; naming another is refused."""
    caller = principal(request)
    if not caller.sees(job.Namespace):
        if job.Namespace != "default":
            raise Forbidden(f"'{caller.name}' may not submit jobs to namespace {job.Namespace!r}")
        job.Namespace = caller.default_namespace


def _read(body: bytes, *, bare: bool) -> tuple[list[Any], bool, bool]:
    """The specs a submission carries, whether it forces them, and whether it is a batch: `{"Job": {...},
    "Force": …}` as Bacalhau's API sends it, `{"Jobs": [...], "Force": …}`, or a bare spec (YAML files, curl
    users)."""
    try:
        document = load_document(body) if body.strip() else None
        if not isinstance(document, dict):
            raise SpecError("", "the body must be {\"Job\": {...}}, {\"Jobs\": [...]} or a job spec mapping")
        if bare:
            return [document], False, False
        wrapped = {str(k).lower(): v for k, v in document.items()}
        force = bool(wrapped.get("force"))
        if "jobs" in wrapped:
            specs = wrapped["jobs"]
            if "job" in wrapped:
                raise SpecError("Jobs", "send either Job or Jobs, not both")
            if not isinstance(specs, list) or not specs:
                raise SpecError("Jobs", "must be a non-empty list of job spec mappings")
            if len(specs) > MAX_BATCH:
                raise SpecError("Jobs", f"at most {MAX_BATCH} jobs in one submission, not {len(specs)}")
            return specs, force, True
        if "job" in wrapped:
            if not isinstance(wrapped["job"], dict):
                raise SpecError("Job", "must be a job spec mapping")
            return [wrapped["job"]], force, False
        return [document], force, False
    except SpecError as exc:
        raise BadRequest(str(exc)) from None


def _parse(spec: Any, where: str = "") -> tuple[Job, list[str]]:
    """A validated job and its warnings; an error names the field, within `where` (e.g. `Jobs[2]`)."""
    try:
        return parse_job(spec, checked=True)
    except SpecError as exc:
        field = ".".join(part for part in (where, exc.field) if part)
        raise BadRequest(f"{field}: {exc.message}" if field else exc.message) from None


def _jobs(body: bytes, bare: bool) -> tuple[list[tuple[Job, list[str]]], bool, bool]:
    """The validated jobs of a submission and their warnings, whether it forces them, and whether it is a batch."""
    specs, force, batch = _read(body, bare=bare)
    return [_parse(spec, f"Jobs[{index}]" if batch else "") for index, spec in enumerate(specs)], force, batch


async def diff(request: Request) -> JSONResponse:
    """A dry run: validate the spec and show how it differs from the latest version of the job it names."""
    svc = services(request)
    body = await read_body(request, svc.settings.max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    specs, _, batch = _read(body, bare=content_type in _YAML_TYPES)
    if batch:
        raise BadRequest("Jobs: a diff takes one job")
    job, warnings = _parse(specs[0])
    _place_in_namespace(request, job)
    before: dict[str, Any] = {}
    if job.Name:
        named = await svc.db(svc.store.named_job, job.Namespace, job.Name)
        before = named.spec if named is not None else {}
    old, new = (yaml.safe_dump(redact_spec(spec), sort_keys=False).splitlines(keepends=True)
                for spec in (before, job.wire()))
    text = "".join(difflib.unified_diff(old, new, "current" if before else "/dev/null", "submitted"))
    return JSONResponse({"Diff": text, "Warnings": warnings})


async def list_jobs(request: Request) -> JSONResponse:
    svc = services(request)
    caller = principal(request)
    wanted = request.query_params.get("namespace") or caller.default_namespace
    namespaces = caller.namespaces if wanted == "*" else [visible_namespace(request, wanted)]
    order_by = request.query_params.get("order_by") or "created_at"
    if order_by not in ("created_at", "create_time", "id"):
        raise BadRequest("order_by: must be created_at or id")
    reverse = request.query_params.get("reverse", "").lower() in ("1", "true", "yes")
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    offset = 0
    token = request.query_params.get("next_token")
    if token:
        order_by, reverse, limit, offset = _decode_token(token)
    try:
        labels = [r for text in request.query_params.getlist("labels") for r in parse_selector(text, "labels")]
    except SpecError as exc:
        raise BadRequest(str(exc)) from None
    jobs, next_offset = await svc.db(
        svc.store.list_jobs,
        namespaces,
        limit=limit,
        offset=offset,
        order_by="id" if order_by == "id" else "create_time",
        reverse=reverse,
        state=request.query_params.get("state") or None,
        labels=labels,
    )
    next_token = _encode_token(order_by, reverse, limit, next_offset) if next_offset is not None else ""
    return JSONResponse({"Items": [wire.job(job) for job in jobs], "NextToken": next_token})


def _encode_token(order_by: str, reverse: bool, limit: int, offset: int) -> str:
    raw = f"{order_by}:{'Y' if reverse else 'N'}:{limit}:{offset}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, bool, int, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        order_by, reverse, limit, offset = raw.split(":")
        if order_by not in ("created_at", "create_time", "id") or not 0 <= int(offset) < 2**31:
            raise ValueError(raw)
        return order_by, reverse == "Y", max(1, min(int(limit), 1000)), int(offset)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("next_token: not a token this gateway issued") from None


async def _job(request: Request) -> JobRecord:
    svc = services(request)
    return await svc.db(svc.store.find_job, visible_namespace(request), request.path_params["ref"])


async def _audit(request: Request, action: str, job: JobRecord, detail: str = "") -> None:
    svc = services(request)
    await svc.db(svc.audit.record, principal(request).name, action, job.id, namespace=job.namespace, detail=detail)


async def get_job(request: Request) -> JSONResponse:
    svc = services(request)
    job = await _job(request)
    include = {part.strip().lower() for part in request.query_params.get("include", "").split(",")}
    body: dict[str, Any] = {"Job": wire.job(job)}
    wanted = query_int(request, "job_version", 0, maximum=2**31)
    if wanted and wanted != job.version:
        versions = {v.version: v for v in await svc.db(svc.store.versions, job.id)}
        if wanted not in versions:
            raise NotFound(f"job {job.id} has no version {wanted}")
        body["Job"] |= redact_spec(versions[wanted].spec) | {"Version": wanted}
    if "history" in include:
        events = await svc.db(svc.store.history, job.id, limit=1000)
        body["History"] = {"Items": [history.wire(e) for e in events], "NextToken": ""}
    if "executions" in include:
        body["Executions"] = {"Items": await _executions(request, job), "NextToken": ""}
    return JSONResponse(body)


async def _executions(request: Request, job: JobRecord) -> list[dict[str, Any]]:
    """The executions of the job's latest version, or of `job_version`, or of all with `all_job_versions`."""
    svc = services(request)
    executions = await svc.db(svc.store.executions, job.id)
    if request.query_params.get("all_job_versions", "").lower() not in ("1", "true", "yes"):
        version = query_int(request, "job_version", 0, maximum=2**31) or job.version
        executions = [e for e in executions if e.job_version == version]
    return [wire.execution(e) for e in executions]


async def list_executions(request: Request) -> JSONResponse:
    job = await _job(request)
    return JSONResponse({"Items": await _executions(request, job), "NextToken": ""})


async def rerun(request: Request) -> JSONResponse:
    svc = services(request)
    body = await read_json(request)
    version = body.get("JobVersion") or 0
    if not isinstance(version, int) or not 0 <= version < 2**31:
        raise BadRequest("JobVersion: must be a version number")
    job = await svc.db(svc.store.rerun, visible_namespace(request), request.path_params["ref"], version)
    _announce(svc, [job])
    await _audit(request, "job.rerun", job, f"version {job.version}")
    return JSONResponse({"JobID": job.id, "JobVersion": job.version, "EvaluationID": "", "Warnings": []})


async def versions(request: Request) -> JSONResponse:
    svc = services(request)
    job = await _job(request)
    found = await svc.db(svc.store.versions, job.id)
    items = [wire.job(job) | redact_spec(v.spec) | {"Version": v.version, "CreateTime": v.create_time} for v in found]
    return JSONResponse({"Items": items, "NextToken": ""})


async def stop(request: Request) -> JSONResponse:
    svc = services(request)
    job = await _job(request)
    reason = request.query_params.get("reason", "")[:1024]
    await svc.db(svc.store.stop_job, job.namespace, job.id, reason)
    svc.work.notify()  # waiting polls carry the cancellations to the agents now
    await _audit(request, "job.stop", job, reason)
    return JSONResponse({"EvaluationID": ""})


async def job_history(request: Request) -> JSONResponse:
    """The job's events, oldest first; `next_token` is the sequence number to continue after."""
    job = await _job(request)
    level = request.query_params.get("event_type") or "all"
    if level not in ("all", "job", "execution"):
        raise BadRequest("event_type: must be all, job or execution")
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    after = query_int(request, "next_token", 0, maximum=2**31 - 1)  # a sequence number (32-bit column)
    since = query_int(request, "since", 0, maximum=2**33)  # seconds; as nanoseconds it fits 64 bits
    svc = services(request)
    events = await svc.db(svc.store.history, job.id, after=after, limit=limit + 1, level=level,
                          execution_id=request.query_params.get("execution_id", ""), since_ns=since * 1_000_000_000)
    page = events[:limit]
    next_token = str(page[-1].seq) if len(events) > limit else ""
    return JSONResponse({"Items": [history.wire(e) for e in page], "NextToken": next_token})


async def results(request: Request) -> JSONResponse:
    """Presigned GET URLs for the published results of the job's completed executions."""
    svc = services(request)
    job = await _job(request)
    executions = await svc.db(svc.store.executions, job.id)
    items = []
    for execution in executions:
        published = execution.compute_state == ExecutionState.COMPLETED and execution.result_size is not None
        if not published or execution.job_version != job.version or execution.result_key is None:
            continue
        url = await run_in_threadpool(svc.objects.presign_get, execution.result_key, svc.settings.download_expiry)
        items.append({
            "Type": "s3PreSigned",
            "Params": {
                "PreSignedURL": url,
                "Managed": True,
                "ExecutionID": execution.id,
                "PartitionIndex": execution.partition_index,
                "SHA256": execution.result_sha256,
                "Size": execution.result_size,
            },
        })
    return JSONResponse({"Items": items, "NextToken": ""})


_JOBS = "/api/v1/orchestrator/jobs"

routes = [
    Route(_JOBS, submit, methods=["PUT", "POST"]),
    Route(_JOBS + "/diff", diff, methods=["PUT", "POST"]),
    Route(_JOBS, list_jobs, methods=["GET"]),
    Route(_JOBS + "/{ref}", get_job, methods=["GET"]),
    Route(_JOBS + "/{ref}", stop, methods=["DELETE"]),
    Route(_JOBS + "/{ref}/executions", list_executions, methods=["GET"]),
    Route(_JOBS + "/{ref}/results", results, methods=["GET"]),
    Route(_JOBS + "/{ref}/history", job_history, methods=["GET"]),
    Route(_JOBS + "/{ref}/versions", versions, methods=["GET"]),
    Route(_JOBS + "/{ref}/rerun", rerun, methods=["PUT", "POST"]),
]
