"""The agent API (`/api/v1/compute/…`): register, long-poll for work, report status, publish, complete.

An agent authenticates every call with the credential it got at registration, and may touch only the
executions assigned to it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import check_join_token
from gateway.errors import BadRequest, Conflict, GatewayError, PayloadTooLarge, Unauthorized
from gateway.log_store import parse_chunks, storable
from gateway.models import ExecutionState, NodeRecord
from gateway.responses import JSONResponse
from gateway.services import Services, bearer, calling_node, read_json, services
from gateway.store import Claimed, Completion, NodeInfo, RunOutcome
from gateway.uploads_api import with_input_urls

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_COMPLETIONS = 1000  # in one request
MAX_COMPLETIONS_BYTES = 4 << 20  # of one request's body (an agent sends at most 1 MiB with more than one)


def _node_info(body: dict[str, Any]) -> NodeInfo:
    def strings(name: str) -> list[str]:
        value = body.get(name) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{name}: must be a list of strings")
        return value

    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise BadRequest("Labels: must be a mapping of strings")
    capacity = body.get("Capacity") or {}
    if not isinstance(capacity, dict):
        raise BadRequest("Capacity: must be a mapping")
    for key, value in capacity.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2**62:
            raise BadRequest(f"Capacity.{key}: must be a number between 0 and 2^62")
    return NodeInfo(
        name=str(body.get("Name") or ""),
        labels=labels,
        engines=strings("Engines"),
        publishers=strings("Publishers"),
        storage_sources=strings("StorageSources"),
        capacity=capacity,
        version=str(body.get("Version") or ""),
    )


async def register(request: Request) -> JSONResponse:
    svc = services(request)
    client = request.client.host if request.client else "?"
    svc.auth.limiter.check(client)
    if not await svc.db(check_join_token, svc.auth, bearer(request)):  # the join tokens are in the database
        svc.auth.limiter.fail(client)
        raise Unauthorized("a valid join token is needed to register a node (shoal agent --token)")
    info = _node_info(await read_json(request))
    node, credential = await svc.db(svc.store.register_node, info)  # its first poll finds its work
    return JSONResponse({
        "NodeID": node.id,
        "Credential": credential,
        "LeaseSeconds": svc.settings.lease_seconds,
        "PollSeconds": svc.settings.poll_seconds,
    })


def _assignment(svc: Services, claimed: Claimed) -> dict[str, Any]:
    execution, job = claimed.execution, claimed.job
    return {
        "ExecutionID": execution.id,
        "JobID": job.id,
        "JobType": job.type,
        "JobVersion": execution.job_version,
        "Namespace": job.namespace,
        "PartitionIndex": execution.partition_index,
        "PartitionCount": job.count,
        "Attempt": execution.attempt,
        "Task": with_input_urls(svc, job.spec["Tasks"][0]),
        "LeaseSeconds": svc.settings.lease_seconds,
    }


async def poll(request: Request) -> Response:
    """Heartbeat, lease renewal and a wait for work: answers as soon as something can be claimed."""
    svc = services(request)
    node = await calling_node(request)
    body = await read_json(request)
    running = body.get("Running") or []
    if not isinstance(running, list) or not all(isinstance(r, str) for r in running):
        raise BadRequest("Running: must be a list of execution IDs")
    free, wait = _count(body, "FreeSlots", 0), body.get("Wait", svc.settings.poll_seconds)
    slots = _count(body, "Slots", None)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < float("inf"):
        raise BadRequest("Wait: must be a number of seconds")
    wait = min(float(wait), svc.settings.poll_seconds)
    info = _node_info(body) if "Engines" in body else None
    loop = asyncio.get_running_loop()
    limit = free if slots is None else slots
    # registered as waiting before the first look (the heartbeat's transaction): no wake-up in between is missed.
    # A submission may claim for it meanwhile, in its own transaction (`WorkSignal.reserve`): what it hands over
    # is answered with at once, and is never left behind when the poll ends otherwise.
    with svc.work.waiting(node.id, info.engines if info else node.engines, limit, slots) as waiter, \
            svc.deadlines.booked(loop.time(), wait) as deadline:
        beat = True
        while True:
            waiter.arm()
            node, cancel, claimed = await svc.db(svc.store.poll, node.id, running, limit=limit,
                                                 slots=slots, beat=beat, info=info, free_slots=free)
            claimed += await waiter.handed()
            if claimed or cancel:
                waiter.took_work()
                return _work(svc, claimed, cancel)
            waiter.found_nothing()
            remaining = deadline - loop.time()
            # a wait that ends without a wake-up brought nothing new for it: its next poll looks first anyway
            ended = remaining <= 0 or await request.is_disconnected() or not await waiter.wait(remaining)
            if claimed := await waiter.handed():
                waiter.took_work()
                return _work(svc, claimed, [])
            if ended:
                return Response(status_code=204)
            beat = False


def _work(svc: Services, claimed: list[Claimed], cancel: list[str]) -> JSONResponse:
    return JSONResponse({"Executions": [_assignment(svc, c) for c in claimed], "Cancel": cancel})


def _count(body: dict[str, Any], name: str, default: int | None) -> Any:
    """A number of execution slots from a poll's body, `default` when it has none."""
    if name not in body:
        return default
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
        raise BadRequest(f"{name}: must be a whole number between 0 and 10000")
    return value


async def status(request: Request) -> JSONResponse:
    svc = services(request)
    node = await calling_node(request)
    body = await read_json(request)
    try:
        state = ExecutionState(str(body.get("State", "")))
    except ValueError:
        raise BadRequest("State: must be Running or Publishing") from None
    if state not in (ExecutionState.RUNNING, ExecutionState.PUBLISHING):
        raise BadRequest("State: must be Running or Publishing")
    await svc.db(svc.store.update_status, node.id, request.path_params["id"], state,
                 str(body.get("Message", ""))[:1024])
    return JSONResponse({"LeaseSeconds": svc.settings.lease_seconds})


async def publish(request: Request) -> JSONResponse:
    """A presigned PUT for this execution's result archive, bound to its declared size and digest."""
    svc = services(request)
    node = await calling_node(request)
    body = await read_json(request)
    size, sha256 = body.get("Size"), str(body.get("SHA256", "")).lower()
    if not isinstance(size, int) or size < 0:
        raise BadRequest("Size: must be a whole number of bytes")
    if size > svc.settings.max_result_bytes:
        raise PayloadTooLarge(f"Size: results are limited to {svc.settings.max_result_bytes} bytes")
    if not _SHA256.match(sha256):
        raise BadRequest("SHA256: must be 64 hex digits")
    key = await svc.db(svc.store.begin_publish, node.id, request.path_params["id"], size, sha256,
                       svc.settings.results_prefix)
    signed = await run_in_threadpool(svc.objects.presign_put, key, size, sha256, svc.settings.upload_expiry)
    return JSONResponse({"URL": signed.url, "Method": signed.method, "Headers": signed.headers, "Key": key})


async def complete(request: Request) -> JSONResponse:
    """The task ran; when it published, the object must be there with the size and digest it declared. With
    Slots, the slot it frees is filled at once and the answer brings what was taken: the agent's waiting poll is
    left to wait (one request and one transaction per job fewer while there is work)."""
    svc = services(request)
    node = await calling_node(request)
    body = await read_json(request)
    slots = _count(body, "Slots", None)
    completion = await _verified(svc, node, _completion(request.path_params["id"], body))
    kept, claimed = await svc.db(svc.store.complete, node.id, completion.execution_id, completion.outcome,
                                 completion.published, completion.logs, svc.logs.max_bytes, slots=slots)
    _completed(svc, node, slots, kept)
    return JSONResponse({"Executions": [_assignment(svc, c) for c in claimed]})


async def complete_all(request: Request) -> JSONResponse:
    """Several executions ran: `complete` for each, in one transaction. Those the node may not report on (not its
    own, ended already, an upload not as declared) are answered in `Rejected`, with the status and message
    `complete` would have given; the others complete. `Gather` says whether other nodes reported completions
    lately (`RecentCompleters`): the agent then sends its executions' completions together."""
    svc = services(request)
    node = await calling_node(request)
    body = await read_json(request, MAX_COMPLETIONS_BYTES)
    slots = _count(body, "Slots", None)
    reported = body.get("Completions")
    if not isinstance(reported, list) or not 0 < len(reported) <= MAX_COMPLETIONS:
        raise BadRequest(f"Completions: must be a list of 1 to {MAX_COMPLETIONS} completions")
    completions = []
    for index, item in enumerate(reported):
        where = f"Completions[{index}]"
        execution_id = item.get("ExecutionID") if isinstance(item, dict) else None
        if not isinstance(execution_id, str) or not execution_id:
            raise BadRequest(f"{where}.ExecutionID: must be an execution ID")
        completions.append(_completion(execution_id, item, where + "."))
    if len({c.execution_id for c in completions}) < len(completions):
        raise BadRequest("Completions: an execution is reported twice")
    rejected: list[dict[str, Any]] = []
    accepted = []
    for completion in completions:
        try:
            accepted.append(await _verified(svc, node, completion))
        except GatewayError as exc:
            rejected.append(_rejection(completion.execution_id, exc))
    results, claimed = await svc.db(svc.store.complete_all, node.id, accepted, svc.logs.max_bytes, slots=slots)
    rejected += [_rejection(c.execution_id, r) for c, r in zip(accepted, results, strict=True)
                 if isinstance(r, GatewayError)]
    _completed(svc, node, slots, sum(r for r in results if isinstance(r, int)))
    gather = svc.completers.shared(node.id, asyncio.get_running_loop().time())
    return JSONResponse({"Executions": [_assignment(svc, c) for c in claimed], "Rejected": rejected,
                         "Gather": gather})


def _completion(execution_id: str, body: dict[str, Any], where: str = "") -> Completion:
    return Completion(execution_id, _outcome(body, where), bool(body.get("Published")),
                      parse_chunks(body.get("Logs"), where + "Logs"))  # a short task's last logs come along


async def _verified(svc: Services, node: NodeRecord, completion: Completion) -> Completion:
    """The completion, once its published results are found as declared; when they are not, the execution fails
    (and may be retried) and the completion is refused."""
    if not completion.published:
        return completion
    execution = await svc.db(svc.store.upload_of, node.id, completion.execution_id)
    problem = await _check_upload(svc, execution.result_key, execution.upload_size, execution.upload_sha256)
    if problem:
        rescheduled = await svc.db(svc.store.fail, node.id, completion.execution_id, f"publish failed: {problem}")
        _failed(svc, node, rescheduled)
        raise Conflict(f"publish failed: {problem}")
    return completion


def _completed(svc: Services, node: NodeRecord, slots: int | None, kept: int) -> None:
    if slots is None:
        svc.work.notify(nodes=[node.id])  # its slots are free: its waiting poll may fill them
    if kept:
        svc.new_logs.notify()


def _rejection(execution_id: str, error: GatewayError) -> dict[str, Any]:
    return {"ExecutionID": execution_id, "Status": error.status, "Message": str(error)}


def _failed(svc: Services, node: NodeRecord, rescheduled: bool) -> None:
    """An execution of `node` failed: its slot is free, and a retry is new work for the engines it runs; without
    one, the job may have failed, and its other executions are to be stopped wherever they run."""
    if rescheduled:
        svc.work.notify(nodes=[node.id], engines=node.engines, count=1)
    else:
        svc.work.notify()


def _outcome(body: dict[str, Any], where: str = "") -> RunOutcome:
    exit_code = body.get("ExitCode")
    if isinstance(exit_code, bool) or not isinstance(exit_code, int) or not -2**31 <= exit_code < 2**31:
        raise BadRequest(f"{where}ExitCode: must be a whole number (a 32-bit exit status)")
    started = body.get("StartTime", 0)
    if isinstance(started, bool) or not isinstance(started, int) or not 0 <= started < 2**63:
        raise BadRequest(f"{where}StartTime: must be a time in nanoseconds since the Unix epoch")
    return RunOutcome(
        exit_code=exit_code,
        started=started,
        stdout=storable(str(body.get("Stdout", ""))),
        stderr=storable(str(body.get("Stderr", ""))),
        stdout_truncated=bool(body.get("StdoutTruncated")),
        stderr_truncated=bool(body.get("StderrTruncated")),
    )


async def _check_upload(svc: Services, key: str | None, size: int | None, sha256: str | None) -> str:
    if key is None or size is None:
        return "no upload was requested for this execution"
    found = await run_in_threadpool(svc.objects.stat, key)
    if found is None:
        return f"no object at {key}"
    if found.size != size:
        return f"the object has {found.size} bytes, {size} were declared"
    if found.sha256 is not None and found.sha256 != sha256:
        return "the object's SHA-256 does not match the declared digest"
    return ""


async def fail(request: Request) -> JSONResponse:
    svc = services(request)
    node = await calling_node(request)
    body = await read_json(request)
    message = storable(str(body.get("Message") or "the agent reported a failure"))[:4096]
    rescheduled = await svc.db(svc.store.fail, node.id, request.path_params["id"], message)
    _failed(svc, node, rescheduled)
    return JSONResponse({"Rescheduled": rescheduled})


_BASE = "/api/v1/compute"

routes = [
    Route(_BASE + "/register", register, methods=["POST"]),
    Route(_BASE + "/poll", poll, methods=["POST"]),
    Route(_BASE + "/executions/{id}/status", status, methods=["POST"]),
    Route(_BASE + "/executions/{id}/publish", publish, methods=["POST"]),
    Route(_BASE + "/executions/{id}/complete", complete, methods=["POST"]),
    Route(_BASE + "/completions", complete_all, methods=["POST"]),
    Route(_BASE + "/executions/{id}/fail", fail, methods=["POST"]),
]
