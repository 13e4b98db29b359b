"""The OpenAPI description (`GET /api/v1/openapi.json`) against a live `shoal serve` process over HTTP.

The document must be valid OpenAPI 3, describe every route of the app, and the gateway must answer as it
says: schemathesis sends each operation a bounded, derandomized set of generated requests (and the
coverage phase's boundary cases) and checks for 5xx, undocumented status codes and responses that do not
match their schema.

The gateway gets a registered agent node, jobs in several states and executions that run, completed with
published results, and failed, so that generated requests also name things that exist. Requests that
would block (a long poll is capped by a short poll period, log `follow` is dropped) are bounded.

Bugs the fuzzing found, or that were found reading the handlers it exercises, are kept as regression
tests (`REGRESSIONS`): each request must be answered with a documented, non-5xx status.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance
from schemathesis.config import SchemathesisConfig
from starlette.routing import Route, WebSocketRoute

from gateway import openapi
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import Cluster, Gateway

OPENAPI = "/api/v1/openapi.json"
JOBS = "/api/v1/orchestrator/jobs"
COMPUTE = "/api/v1/compute"
SEED = 20_240_611
MAX_EXAMPLES = 20
INT64_MAX = 2**63 - 1
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]

pytestmark = pytest.mark.timeout(120)



@schemathesis.deserializer("application/x-ndjson")
def _ndjson(_: Any, response: Any) -> list[Any]:
    """One JSON value per line, validated as an array."""
    return [json.loads(line) for line in response.content.decode().splitlines() if line.strip()]


# -- the live gateway -------------------------------------------------------------------------------------


@dataclass
class Live:
    """A gateway with things in it, and what the generated requests may name."""

    gateway: Gateway
    credential: str  # the agent node's, for the agent protocol
    job_refs: list[str] = field(default_factory=list)
    execution_ids: list[str] = field(default_factory=list)
    node_refs: list[str] = field(default_factory=list)  # a node the node API may approve, reject or delete

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """On a connection of its own: after a 500 the server drops the connection it answered on."""
        return httpx.request(method, self.gateway.url + path, timeout=30, **kwargs)


def docker_job(name: str, count: int = 1) -> dict[str, Any]:
    return {"Name": name, "Type": "batch", "Count": count, "Tasks": [{"Name": "main", "Engine": {
        "Type": "docker", "Params": {"Image": "busybox:1", "Entrypoint": ["/bin/sh", "-c"],
                                     "Parameters": ["echo hello"]}}}]}


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def _populate(gateway: Gateway) -> Live:
    http = gateway.http
    agent = _ok(http.post(f"{COMPUTE}/register", json={
        "Name": "fuzz-agent", "Engines": ["docker", "wasm"], "Publishers": ["s3managed", "noop"],
        "StorageSources": ["urlDownload", "inline", "s3", "local", "managed"], "Labels": {"region": "eu"},
        "Capacity": {"CPU": 1000, "Memory": 1e15, "Disk": 1e15}, "Version": "test",
    }))
    victim = _ok(http.post(f"{COMPUTE}/register", json={"Name": "victim"}))  # runs nothing
    live = Live(gateway, agent["Credential"], node_refs=[victim["NodeID"]])
    auth = {"Authorization": f"Bearer {live.credential}"}

    probe = _ok(http.put(JOBS, json={"Job": docker_job("probe", count=3)}))["JobID"]
    done = _ok(http.put(JOBS, json={"Job": docker_job("nothing", count=0)}))["JobID"]
    claimed = _ok(http.post(f"{COMPUTE}/poll", headers=auth, json={"FreeSlots": 3, "Wait": 0}))["Executions"]
    running, published, failed = (item["ExecutionID"] for item in claimed)

    _ok(http.post(f"{COMPUTE}/executions/{running}/status", headers=auth, json={"State": "Running"}))
    _ok(http.post(f"{COMPUTE}/executions/{running}/logs", headers=auth, json={"Chunks": [
        {"Stream": "stdout", "Offset": 0, "Data": "hello\nworld\n"},
        {"Stream": "stderr", "Offset": 0, "Data": "careful\n"},
    ]}))
    archive = gzip.compress(b"results")
    upload = _ok(http.post(f"{COMPUTE}/executions/{published}/publish", headers=auth, json={
        "Size": len(archive), "SHA256": hashlib.sha256(archive).hexdigest()}))
    _ok(httpx.put(upload["URL"], content=archive, headers=upload["Headers"]))
    _ok(http.post(f"{COMPUTE}/executions/{published}/complete", headers=auth, json={
        "ExitCode": 0, "Stdout": "hello\n", "Published": True}))
    _ok(http.post(f"{COMPUTE}/executions/{failed}/fail", headers=auth, json={"Message": "disk full"}))

    live.job_refs = [probe, probe[:12], "probe", done]
    live.execution_ids = [running, published, failed]
    return live


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    cluster = Cluster(tmp_path_factory.mktemp("openapi"))
    try:
        # jobs wait for a node instead of failing; a long poll lasts at most 0.02 s; leases and nodes outlive
        # the test
        gateway = cluster.gateway(queue_timeout="3600", poll_seconds="0.02", lease_seconds="600",
                                  disconnect_seconds="600")
        yield _populate(gateway)
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def document(live: Live) -> dict[str, Any]:
    response = live.gateway.http.get(OPENAPI)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"]
    body: dict[str, Any] = response.json()
    return body


# -- the document -----------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3(live: Live, document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.0.3"
    validate_openapi(document)  # the OpenAPI 3.0 meta-schema, and every $ref resolves
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()
    operations = {(result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()}
    assert operations == {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    # loaded from its URL, as the fuzzing does, the document leaves out only the operation that serves it
    served = schemathesis.openapi.from_url(live.gateway.url + OPENAPI)
    assert {(r.ok().method.upper(), r.ok().path) for r in served.get_all_operations()} == operations - {
        ("GET", OPENAPI)}
    ids = [op["operationId"] for methods in document["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_the_security_schemes_are_declared(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["basicAuth"] == schemes["basicAuth"] | {"type": "http", "scheme": "basic"}
    assert schemes["bearerAuth"] == schemes["bearerAuth"] | {"type": "http", "scheme": "bearer"}
    assert {} in document["security"], "credentials are optional by default"
    for path, methods in document["paths"].items():
        if path.startswith(COMPUTE + "/") and path != COMPUTE + "/register":
            for operation in methods.values():
                assert operation["security"] == [{"bearerAuth": []}], f"{path} needs the node credential"


def _app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(Settings(data_dir=tmp_path))
    found = set()
    for route in app.routes:
        assert isinstance(route, Route | WebSocketRoute), f"a route of an unexpected kind: {route!r}"
        path = route.path.replace(":path}", "}")  # Starlette's convertors are not OpenAPI's
        if isinstance(route, WebSocketRoute):
            found.add(("GET", path))  # described as the GET of that path, which says it upgrades
            continue
        found |= {(method, path) for method in route.methods or () if method != "HEAD"}  # HEAD: implicit
    return found


def test_every_route_is_described(tmp_path: Path, document: dict[str, Any]) -> None:
    described = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    routes = _app_routes(tmp_path)
    assert routes - described == set(), "routes without a description in gateway/openapi.py"
    assert described - routes == set(), "descriptions of routes the app does not have"


def test_every_error_response_is_the_error_shape(document: dict[str, Any]) -> None:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert "200" in operation["responses"] or "201" in operation["responses"] \
                or "307" in operation["responses"], f"{method} {path} has no success response"
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    assert set(response) == {"$ref"}, f"{method} {path} {status}: one of components/responses"
                    resolved = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
                    assert resolved["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}
                    assert "X-Request-ID" in resolved["headers"]


# -- known gateway bugs -----------------------------------------------------------------------------------


def _spec_values(body: Any, key: str) -> Iterator[Any]:
    """Every value under `key` (any case, as the spec reader matches keys) anywhere in a JSON body."""
    if isinstance(body, dict):
        for name, value in body.items():
            if isinstance(name, str) and name.lower() == key.lower():
                yield value
            yield from _spec_values(value, key)
    elif isinstance(body, list):
        for item in body:
            yield from _spec_values(item, key)


@dataclass(frozen=True)
class Regression:
    """A request that once made the gateway fail, and the operation it calls."""

    id: str
    name: str
    operation: tuple[str, str]  # (method, path template)
    reproduce: Callable[[Live], httpx.Response]


def _submit(live: Live, job: dict[str, Any]) -> httpx.Response:
    return live.request("PUT", JOBS, json={"Job": job})


def _with_task(**task: Any) -> dict[str, Any]:
    job = docker_job("")
    job["Tasks"][0] |= task
    return job


def _claim_one(live: Live) -> tuple[str, dict[str, str]]:
    """An execution claimed by a node of its own, and that node's credential."""
    label = f"bug-{len(live.node_refs)}-{live.gateway.url.rsplit(':', 1)[1]}"
    node = _ok(live.request("POST", f"{COMPUTE}/register", json={
        "Engines": ["docker"], "Publishers": ["s3managed"], "Labels": {"reproduces": label}}))
    live.node_refs.append(node["NodeID"])
    auth = {"Authorization": f"Bearer {node['Credential']}"}
    job = docker_job("") | {"Constraints": [{"Key": "reproduces", "Operator": "=", "Values": [label]}]}
    job_id = _ok(_submit(live, job))["JobID"]
    for _ in range(20):  # waiting executions are claimed oldest first, at most 256 at a time
        claimed = _ok(live.request("POST", f"{COMPUTE}/poll", headers=auth, json={"FreeSlots": 256, "Wait": 0}))
        mine = [e["ExecutionID"] for e in claimed["Executions"] if e["JobID"] == job_id]
        if mine:
            return mine[0], auth
    raise AssertionError(f"the execution of {job_id} was never claimed")


def _reproduce_bad_capacity(live: Live) -> httpx.Response:
    registered = live.request("POST", f"{COMPUTE}/register", json={"Engines": ["docker"], "Capacity": {"CPU": "lots"}})
    _ok(_submit(live, docker_job("")))  # submissions still work
    return registered


def _reproduce_exit_code(live: Live) -> httpx.Response:
    execution, auth = _claim_one(live)
    return live.request("POST", f"{COMPUTE}/executions/{execution}/complete", headers=auth,
                        content=b'{"ExitCode": 100000000000000000000}')


def _reproduce_log_offset(live: Live) -> httpx.Response:
    execution, auth = _claim_one(live)
    return live.request("POST", f"{COMPUTE}/executions/{execution}/logs", headers=auth,
                        content=b'{"Chunks": [{"Stream": "stdout", "Offset": 100000000000000000000, "Data": "x"}]}')


def _is_submit(method: str, path: str) -> bool:
    return path in (JOBS, JOBS + "/diff") and method in ("PUT", "POST")


REGRESSIONS = [
    Regression(
        "huge-memory",
        "a Resources.Memory or Disk past 64 bits is a 500 (an OverflowError in parse_bytes, or at storage)",
        ("PUT", JOBS),
        lambda live: _submit(live, _with_task(Resources={"Memory": "1" + "0" * 400})),
    ),
    Regression(
        "history-since",
        "a job's history since= after about 2262 (since > 9223372036) is a 500, not a 400",
        ("GET", JOBS + "/{ref}/history"),
        lambda live: live.request("GET", f"{JOBS}/{live.job_refs[0]}/history", params={"since": 10**10}),
    ),
    Regression(
        "rerun-version",
        "a rerun JobVersion beyond 64 bits is a 500, not a 404",
        ("PUT", JOBS + "/{ref}/rerun"),
        lambda live: live.request("PUT", f"{JOBS}/{live.job_refs[0]}/rerun",
                                  content=b'{"JobVersion": 100000000000000000000}'),
    ),
    Regression(
        "capacity-text",
        "a node registered with a non-numeric Capacity value makes every later submission a 500",
        ("POST", COMPUTE + "/register"),
        _reproduce_bad_capacity,
    ),
    Regression(
        "poll-free-slots",
        "a poll's FreeSlots beyond 64 bits (or Infinity) is a 500, not a 400",
        ("POST", COMPUTE + "/poll"),
        lambda live: live.request("POST", f"{COMPUTE}/poll", headers={
            "Authorization": f"Bearer {live.credential}"}, content=b'{"FreeSlots": 100000000000000000000}'),
    ),
    Regression(
        "exit-code",
        "a completion's ExitCode beyond 64 bits is a 500, not a 400",
        ("POST", COMPUTE + "/executions/{id}/complete"),
        _reproduce_exit_code,
    ),
    Regression(
        "log-offset",
        "a log chunk's Offset beyond 64 bits is a 500, not a 400",
        ("POST", COMPUTE + "/executions/{id}/logs"),
        _reproduce_log_offset,
    ),
    Regression(
        "managed-namespace",
        "a managed input of a namespace that is not a valid object key segment (e.g. _x) is a 404 'no "
        "object', not the 400 check_managed_inputs means",
        ("PUT", JOBS),
        lambda live: _submit(live, {**_with_task(InputSources=[{"Source": {"Type": "managed", "Params": {
            "Key": "uploads/_x/" + "0" * 32 + "/data"}}, "Target": "/in"}]), "Namespace": "_x"}),
    ),
]


def _documented(document: dict[str, Any], method: str, template: str, status: int) -> bool:
    return str(status) in document["paths"][template][method.lower()]["responses"]



@pytest.mark.parametrize("regression", REGRESSIONS, ids=[r.id for r in REGRESSIONS])
def test_requests_that_once_failed_are_answered_as_described(live: Live, document: dict[str, Any],
                                                              regression: Regression) -> None:
    response = regression.reproduce(live)
    assert response.status_code < 500, f"{regression.name}: {response.status_code} {response.text}"
    assert _documented(document, *regression.operation, response.status_code), response.text


# -- the fuzzing ------------------------------------------------------------------------------------------
#
# One test per operation, generated from the document as the gateway module builds it (the served copy is
# checked to be the same in test_the_fuzzed_document_is_the_served_one); requests go over HTTP to the live
# gateway. schemathesis' lazy `from_fixture` would load the served copy, but it does not run on pytest 9.2
# (it sets `Function._nodeid`, which pytest 9.2 no longer has).

_FUZZ_CONFIG = SchemathesisConfig.from_dict({
    "seed": SEED,
    "request-timeout": 10,
    "suppress-health-check": ["all"],
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                   "with-security-parameters": False},
    "phases": {"stateful": {"enabled": False}, "coverage": {"unexpected-methods": []}},
    # the coverage phase sends a job spec some 1,400 boundary cases: once (to PUT), not for each alias
    "operations": [{"include-operation-id": ["submitJobPost", "diffJob", "diffJobPost"],
                    "phases": {"coverage": {"enabled": False}}}],
})
fuzzed = schemathesis.openapi.from_dict(openapi.DOCUMENT, config=_FUZZ_CONFIG)
_RUNNING: list[Live] = []  # the module's live gateway, while its tests run


@pytest.fixture(scope="module")
def running(live: Live) -> Iterator[Live]:
    _RUNNING.append(live)
    yield live
    _RUNNING.clear()


def _existing(values: Callable[[Live], list[str]]) -> st.SearchStrategy[str]:
    """One of the things in the live gateway (drawn when the test runs, not when it is collected)."""
    return st.deferred(lambda: st.sampled_from(values(_RUNNING[0])))


def _path_values(path: str) -> tuple[str, st.SearchStrategy[str]] | None:
    if path.startswith(JOBS + "/{ref}"):
        return "ref", _existing(lambda live: live.job_refs)
    if path.startswith("/api/v1/orchestrator/nodes/{ref}"):
        return "ref", _existing(lambda live: live.node_refs)
    if path.startswith(COMPUTE + "/executions/{id}"):
        return "id", _existing(lambda live: live.execution_ids)
    return None


@fuzzed.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Half the time, something that exists."""
    known = _path_values(context.operation.path)
    if known is None:
        return st.just(path_parameters)
    name, values = known
    return st.one_of(st.just(path_parameters), values.map(lambda value: {**path_parameters, name: value}))


@fuzzed.hook
def flatmap_query(context: Any, query: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Logs: half the time, of an execution that exists."""
    if context.operation.path != JOBS + "/{ref}/logs":
        return st.just(query)
    named = _existing(lambda live: live.execution_ids).map(lambda value: {**(query or {}), "execution_id": value})
    return st.one_of(st.just(query), named)


def test_the_fuzzed_document_is_the_served_one(document: dict[str, Any]) -> None:
    assert json.loads(json.dumps(openapi.DOCUMENT)) == document


def _addresses_the_operation(case: Any) -> bool:
    """Path parameters the URL cannot carry as one segment ('', '.', '..') name another resource."""
    return all(str(value) not in ("", ".", "..") for value in (case.path_parameters or {}).values())


MAX_FUZZED_COUNT = 20


def _bound(case: Any) -> None:
    """Keep each request short: no log following (it lasts until the execution ends), and no more than
    MAX_FUZZED_COUNT partitions a job (the gateway writes an execution per partition, 10,000 take seconds)."""
    if case.operation.path == JOBS + "/{ref}/logs" and case.query:
        case.query.pop("follow", None)
    if case.operation.path in (JOBS, JOBS + "/diff") and isinstance(case.body, dict):
        for spec in (case.body, case.body.get("Job")):
            count = spec.get("Count") if isinstance(spec, dict) else None
            if isinstance(count, int) and not isinstance(count, bool) and count > MAX_FUZZED_COUNT:
                spec["Count"] = MAX_FUZZED_COUNT


@fuzzed.parametrize()
@pytest.mark.timeout(120)
def test_the_gateway_answers_as_described(case: Any, running: Live) -> None:
    if not _addresses_the_operation(case):
        return
    _bound(case)
    if case.operation.path.startswith(COMPUTE + "/") and case.operation.path != COMPUTE + "/register":
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {running.credential}"}
    case.call_and_validate(base_url=running.gateway.url, checks=CHECKS)
