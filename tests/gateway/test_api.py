"""The user API over real HTTP on a `shoal serve` process: submit, get, list, executions, results, errors.

No agent is connected and the gateway queues what it cannot place, so every job waits Queued with New
executions (a Count 0 job is Completed at once).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy
import yaml

from shoal import __version__
from tests.conftest import Gateway
from tests.specs import docker_job


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway(queue_timeout="3600")

JOBS = "/api/v1/orchestrator/jobs"

LOWERCASE_YAML = """
name: hello-yaml
type: batch
count: 2
tasks:
  - name: main
    engine:
      type: docker
      params:
        image: shoal-test/busybox:1
        entrypoint: ["/bin/sh", "-c"]
        parameters: ["echo hello"]
    resultPaths:
      - name: outputs
        path: /outputs
"""


def expect_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Bacalhau's error shape: {Status, Message, Code, RequestID}, the ID also in the X-Request-ID header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["Status"] == status
    assert isinstance(body["Message"], str)
    assert body["Message"]
    assert isinstance(body["Code"], str)
    assert body["Code"]
    assert body["RequestID"]
    assert body["RequestID"] == response.headers["x-request-id"]
    return body


def job_ids(gateway: Gateway, **params: str) -> list[str]:
    response = gateway.http.get(JOBS, params=params)
    assert response.status_code == 200, response.text
    return [job["ID"] for job in response.json()["Items"]]


# -- submit -----------------------------------------------------------------------------------------------


def test_submit_json_with_put_and_with_post(gateway: Gateway) -> None:
    submitted = []
    for method in ("PUT", "POST"):
        response = gateway.http.request(method, JOBS, json={"Job": docker_job("echo", method), "Force": False})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["JobID"].startswith("j-")
        assert body["Warnings"] == []
        assert "EvaluationID" in body
        submitted.append(body["JobID"])
    assert submitted[0] != submitted[1]
    for job_id, method in zip(submitted, ("PUT", "POST"), strict=True):
        job = gateway.job(job_id)
        assert job["ID"] == job_id
        assert job["Name"] == job_id  # no Name: the ID
        assert job["State"]["StateType"] == "Queued"
        assert job["Tasks"][0]["Engine"]["Params"]["Parameters"] == [f"echo {method}"]
    assert sorted(job_ids(gateway)) == sorted(submitted)


def test_submit_bare_lowercase_yaml(gateway: Gateway) -> None:
    response = gateway.http.put(JOBS, content=LOWERCASE_YAML.encode(),
                                headers={"Content-Type": "application/yaml; charset=utf-8"})
    assert response.status_code == 200, response.text
    job_id = response.json()["JobID"]
    assert job_id.startswith("j-")

    job = gateway.job(job_id)
    assert (job["Name"], job["Type"], job["Count"], job["Namespace"]) == ("hello-yaml", "batch", 2, "default")
    [task] = job["Tasks"]
    assert task["Engine"]["Type"] == "docker"
    assert task["Engine"]["Params"]["Image"] == "shoal-test/busybox:1"
    assert task["Engine"]["Params"]["Entrypoint"] == ["/bin/sh", "-c"]
    assert task["ResultPaths"] == [{"Name": "outputs", "Path": "/outputs"}]
    assert task["Publisher"]["Type"] == "s3managed"


def test_submit_reports_ignored_server_fields_as_warnings(gateway: Gateway) -> None:
    spec = docker_job("true") | {"ID": "j-chosen-by-me", "CreateTime": 1}
    response = gateway.http.put(JOBS, json={"Job": spec})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["JobID"] != "j-chosen-by-me"
    assert len(body["Warnings"]) == 2
    assert all("ignored" in warning for warning in body["Warnings"])


def test_invalid_spec_is_refused_naming_the_field_and_nothing_is_stored(gateway: Gateway) -> None:
    kept = gateway.submit(docker_job("true"))
    spec = docker_job("true")
    del spec["Tasks"][0]["Engine"]["Params"]["Image"]

    body = expect_error(gateway.http.put(JOBS, json={"Job": spec}), 400)
    assert "Tasks[0].Engine.Params.Image" in body["Message"]
    assert body["Code"] == "BadRequest"

    spec = docker_job("true", env={"lower": "x"})
    body = expect_error(gateway.http.post(JOBS, json={"Job": spec}), 400)
    assert "Tasks[0].Env.lower" in body["Message"]

    yaml_spec = LOWERCASE_YAML.replace("count: 2", "count: -2")
    body = expect_error(gateway.http.put(JOBS, content=yaml_spec, headers={"Content-Type": "application/yaml"}), 400)
    assert "Count" in body["Message"]

    assert job_ids(gateway) == [kept]


def test_malformed_bodies_are_bad_requests(gateway: Gateway) -> None:
    json_headers = {"Content-Type": "application/json"}
    for body in (b'{"Job": {"Type": "batch", "Tasks": [', b"[1, 2, 3]", b'"just a string"', b"",
                 b'{"Job": "not a mapping"}'):
        error = expect_error(gateway.http.put(JOBS, content=body, headers=json_headers), 400)
        assert error["Code"] == "BadRequest", body
    assert job_ids(gateway) == []


def test_a_batch_of_jobs_is_stored_in_order_and_answered_in_order(gateway: Gateway) -> None:
    specs = [docker_job("echo", str(index)) for index in range(5)] + [docker_job("true") | {"ID": "j-mine"}]
    response = gateway.http.put(JOBS, json={"Jobs": specs})
    assert response.status_code == 200, response.text
    answers = response.json()["Jobs"]
    assert len(answers) == 6
    assert len({answer["JobID"] for answer in answers}) == 6
    assert answers[-1]["Warnings"] == ["ID is set by the server and was ignored"]
    for index, answer in enumerate(answers[:5]):
        job = gateway.job(answer["JobID"])
        assert job["State"]["StateType"] == "Queued"
        assert job["Tasks"][0]["Engine"]["Params"]["Parameters"] == [f"echo {index}"]
    assert sorted(job_ids(gateway)) == sorted(answer["JobID"] for answer in answers)


def test_a_batch_with_one_bad_job_stores_none_and_names_it(gateway: Gateway) -> None:
    bad = docker_job("true")
    del bad["Tasks"][0]["Engine"]["Params"]["Image"]
    body = expect_error(gateway.http.put(JOBS, json={"Jobs": [docker_job("true"), bad]}), 400)
    assert "Jobs[1].Tasks[0].Engine.Params.Image" in body["Message"]

    named = docker_job("true") | {"Name": "once"}
    assert gateway.http.put(JOBS, json={"Job": named}).status_code == 200
    body = expect_error(gateway.http.put(JOBS, json={"Jobs": [docker_job("echo", "new"), named]}), 400)
    assert body["Message"].startswith("Jobs[1]: no changes detected"), body
    assert len(job_ids(gateway)) == 1  # only the named job submitted on its own

    for jobs, field in (([], "Jobs: must be a non-empty list"), ("no", "Jobs: must be a non-empty list"),
                        ([docker_job("true")] * 1001, "Jobs: at most 1000 jobs")):
        body = expect_error(gateway.http.put(JOBS, json={"Jobs": jobs}), 400)
        assert body["Message"].startswith(field), body
    body = expect_error(gateway.http.put(JOBS, json={"Jobs": [docker_job("true")], "Job": docker_job("true")}), 400)
    assert "either Job or Jobs" in body["Message"]
    body = expect_error(gateway.http.put(f"{JOBS}/diff", json={"Jobs": [docker_job("true")]}), 400)
    assert body["Message"].startswith("Jobs: a diff takes one job")
    assert len(job_ids(gateway)) == 1


def test_a_large_batch_is_read_and_checked_the_same(gateway: Gateway) -> None:
    """Bodies over 256 KiB are parsed in a worker thread: same answers, same errors."""
    specs = [docker_job("true", env={"PAD": "x" * 60_000}) for _ in range(6)]
    bad = docker_job("true", env={"PAD": "x" * 60_000, "lower": "x"})
    body = expect_error(gateway.http.put(JOBS, json={"Jobs": [*specs, bad]}), 400)
    assert "Jobs[6].Tasks[0].Env.lower" in body["Message"]
    assert job_ids(gateway) == []
    response = gateway.http.put(JOBS, json={"Jobs": specs})
    assert response.status_code == 200, response.text
    assert sorted(job_ids(gateway)) == sorted(answer["JobID"] for answer in response.json()["Jobs"])


def test_a_batch_can_force_an_unchanged_named_job_again(gateway: Gateway) -> None:
    named = docker_job("true") | {"Name": "again"}
    first = gateway.http.put(JOBS, json={"Jobs": [named]}).json()["Jobs"][0]
    again = gateway.http.put(JOBS, json={"Jobs": [named, docker_job("true")], "Force": True})
    assert again.status_code == 200, again.text
    answer = again.json()["Jobs"][0]
    assert (answer["JobID"], answer["JobVersion"]) == (first["JobID"], 2)


def test_body_over_the_limit_is_413(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(max_body_bytes="2000")
    padded = docker_job("echo", "x" * 3000)
    body = expect_error(gateway.http.put(JOBS, json={"Job": padded}), 413)
    assert body["Code"] == "PayloadTooLarge"
    assert "2000" in body["Message"]

    # the same without a Content-Length header (chunked): the limit holds while the body is read
    raw = httpx.Request("PUT", "http://gateway/", json={"Job": padded}).read()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 500):
            yield raw[start:start + 500]

    response = gateway.http.put(JOBS, content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    expect_error(response, 413)

    assert job_ids(gateway) == []
    gateway.submit(docker_job("echo", "small"))  # under the limit is fine
    assert len(job_ids(gateway)) == 1


# -- get --------------------------------------------------------------------------------------------------


def test_get_job_by_id_prefix_and_name(gateway: Gateway) -> None:
    named = gateway.submit(docker_job("true") | {"Name": "nightly-report"})
    gateway.submit(docker_job("true"))
    for ref in (named, named[:10], "nightly-report"):
        response = gateway.http.get(f"{JOBS}/{ref}")
        assert response.status_code == 200, (ref, response.text)
        body = response.json()
        assert body["Job"]["ID"] == named
        assert body["Job"]["Name"] == "nightly-report"
        assert "Executions" not in body


def test_ambiguous_prefix_is_a_bad_request(gateway: Gateway) -> None:
    first = gateway.submit(docker_job("true"))
    assert gateway.job("j-")["ID"] == first  # one job: the prefix is unique
    gateway.submit(docker_job("true"))
    body = expect_error(gateway.http.get(f"{JOBS}/j-"), 400)
    assert "ambiguous" in body["Message"]


def test_unknown_job_is_404(gateway: Gateway) -> None:
    gateway.submit(docker_job("true"))
    for path in (f"{JOBS}/j-00000000-no-such-job", f"{JOBS}/nothing-by-this-name/executions",
                 f"{JOBS}/j-00000000-no-such-job/results"):
        body = expect_error(gateway.http.get(path), 404)
        assert body["Code"] == "NotFound"


def test_include_executions(gateway: Gateway) -> None:
    job_id = gateway.submit(docker_job("true", count=2))
    response = gateway.http.get(f"{JOBS}/{job_id}", params={"include": "history,executions"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["Job"]["ID"] == job_id
    items = body["Executions"]["Items"]
    assert [item["PartitionIndex"] for item in items] == [0, 1]
    assert {item["JobID"] for item in items} == {job_id}


# -- list -------------------------------------------------------------------------------------------------


def walk_pages(gateway: Gateway, **params: str) -> tuple[list[str], int]:
    """Every job ID across pages, following NextToken; and how many pages it took."""
    seen: list[str] = []
    pages = 0
    token = ""
    while True:
        query = dict(params) | ({"next_token": token} if token else {})
        response = gateway.http.get(JOBS, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert len(body["Items"]) <= 2
        seen += [job["ID"] for job in body["Items"]]
        token = body["NextToken"]
        if not token:
            return seen, pages
        assert pages < 10, "paging does not end"


def test_list_pages_through_every_job_once(gateway: Gateway) -> None:
    submitted = [gateway.submit(docker_job("echo", str(index))) for index in range(5)]

    seen, pages = walk_pages(gateway, limit="2")
    assert pages == 3
    assert sorted(seen) == sorted(submitted)
    assert len(seen) == len(set(seen))
    assert seen == submitted[::-1]  # newest first

    seen, _ = walk_pages(gateway, limit="2", reverse="true")
    assert seen == submitted

    seen, pages = walk_pages(gateway, limit="2", order_by="id")
    assert (seen, pages) == (sorted(submitted, reverse=True), 3)
    seen, _ = walk_pages(gateway, limit="2", order_by="id", reverse="true")
    assert seen == sorted(submitted)


def test_list_filters_by_state(gateway: Gateway) -> None:
    pending = gateway.submit(docker_job("true"))
    completed = gateway.submit(docker_job("true", count=0))  # nothing to run: Completed at once
    assert gateway.job(completed)["State"]["StateType"] == "Completed"
    assert job_ids(gateway, state="Completed") == [completed]
    assert job_ids(gateway, state="queued") == [pending]
    assert job_ids(gateway, state="Failed") == []
    assert sorted(job_ids(gateway)) == sorted([pending, completed])


def test_list_refuses_bad_parameters(gateway: Gateway) -> None:
    gateway.submit(docker_job("true"))
    body = expect_error(gateway.http.get(JOBS, params={"next_token": "garbage"}), 400)
    assert "next_token" in body["Message"]
    forged = base64.urlsafe_b64encode(b"id:N:two:0").decode().rstrip("=")
    body = expect_error(gateway.http.get(JOBS, params={"next_token": forged}), 400)
    assert "next_token" in body["Message"]
    body = expect_error(gateway.http.get(JOBS, params={"limit": "abc"}), 400)
    assert body["Message"].startswith("limit")
    body = expect_error(gateway.http.get(JOBS, params={"limit": "0"}), 400)
    assert body["Message"].startswith("limit")
    body = expect_error(gateway.http.get(JOBS, params={"order_by": "color"}), 400)
    assert "order_by" in body["Message"]


# -- executions and results -------------------------------------------------------------------------------


def test_executions_are_new_without_an_agent(gateway: Gateway) -> None:
    job_id = gateway.submit(docker_job("true", count=3))
    response = gateway.http.get(f"{JOBS}/{job_id[:12]}/executions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["NextToken"] == ""
    items = body["Items"]
    assert [item["PartitionIndex"] for item in items] == [0, 1, 2]
    for item in items:
        assert item["ID"].startswith("e-")
        assert item["JobID"] == job_id
        assert item["ComputeState"]["StateType"] == "New"
        assert item["DesiredState"]["StateType"] == "Running"
        assert item["NodeID"] == ""
        assert item["Attempt"] == 1
        assert item["RunOutput"] is None
    assert len({item["ID"] for item in items}) == 3


def test_results_are_empty_before_completion(gateway: Gateway) -> None:
    job_id = gateway.submit(docker_job("true", count=2))
    response = gateway.http.get(f"{JOBS}/{job_id}/results")
    assert response.status_code == 200, response.text
    assert response.json() == {"Items": [], "NextToken": ""}


# -- the agent endpoints, unknown routes, request IDs -----------------------------------------------------


def test_alive_and_version(gateway: Gateway) -> None:
    alive = gateway.http.get("/api/v1/agent/alive")
    assert (alive.status_code, alive.json()) == (200, {"Status": "OK"})
    version = gateway.http.get("/api/v1/agent/version")
    assert version.status_code == 200
    body = version.json()
    assert body["GitVersion"] == f"v{__version__}"
    assert [body["Major"], body["Minor"]] == __version__.split(".")[:2]
    redirected = gateway.http.get("/version", follow_redirects=True)
    assert redirected.status_code == 200
    assert redirected.json() == body


def test_unknown_route_and_wrong_method_have_the_error_shape(gateway: Gateway) -> None:
    expect_error(gateway.http.get("/api/v1/orchestrator/no-such-thing"), 404)
    expect_error(gateway.http.get("/nope"), 404)
    expect_error(gateway.http.patch(JOBS, json={}), 405)


def test_every_response_has_a_request_id(gateway: Gateway) -> None:
    job_id = gateway.submit(docker_job("true"))
    responses = [
        gateway.http.get("/api/v1/agent/alive"),
        gateway.http.get("/version"),
        gateway.http.get(JOBS),
        gateway.http.put(JOBS, json={"Job": docker_job("true")}),
        gateway.http.put(JOBS, content=yaml.safe_dump({"Type": "nope"}), headers={"Content-Type": "text/yaml"}),
        gateway.http.get(f"{JOBS}/{job_id}"),
        gateway.http.get(f"{JOBS}/{job_id}/executions"),
        gateway.http.get(f"{JOBS}/{job_id}/results"),
        gateway.http.get(f"{JOBS}/j-unknown"),
        gateway.http.get("/missing"),
    ]
    ids = [response.headers.get("x-request-id") for response in responses]
    assert all(ids), [(r.request.url, r.status_code) for r, i in zip(responses, ids, strict=True) if not i]
    assert len(set(ids)) == len(ids)


# -- known bugs -------------------------------------------------------------------------------------------

HUGE_OFFSET_TOKEN = base64.urlsafe_b64encode(b"id:N:2:" + b"9" * 30).decode().rstrip("=")
DEEP_JSON = b"[" * 5000 + b"]" * 5000


def test_deeply_nested_body_is_a_bad_request(gateway: Gateway) -> None:
    response = gateway.http.put(JOBS, content=DEEP_JSON, headers={"Content-Type": "application/json"})
    expect_error(response, 400)


def test_next_token_with_a_huge_offset_is_a_bad_request(gateway: Gateway) -> None:
    gateway.submit(docker_job("true"))
    body = expect_error(gateway.http.get(JOBS, params={"next_token": HUGE_OFFSET_TOKEN}), 400)
    assert "next_token" in body["Message"]


def test_server_errors_have_the_error_shape_and_a_request_id_header(gateway: Gateway) -> None:
    # break the database under the running gateway: the next list is an internal error
    url = gateway.env.get("SHOAL_DATABASE_URL") or f"sqlite:///{gateway.data_dir / 'shoal.db'}"
    broken = sqlalchemy.create_engine(url)
    with broken.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE jobs CASCADE" if url.startswith("postgresql") else
                                           "DROP TABLE jobs"))
    broken.dispose()
    response = httpx.get(gateway.url + JOBS)
    body = expect_error(response, 500)
    assert body["Message"] == "internal server error"
    assert response.headers.get("x-request-id") == body["RequestID"]


def test_list_filters_by_label_selector(gateway: Gateway) -> None:
    def labelled(**labels: str) -> str:
        return gateway.submit(docker_job("true") | {"Labels": labels})

    a, b = labelled(team="a", env="dev"), labelled(team="b", env="prod")
    assert job_ids(gateway, labels="team=a") == [a]
    assert job_ids(gateway, labels="env in (dev,prod),team!=a") == [b]
    both = gateway.http.get(JOBS, params=[("labels", "env"), ("labels", "team notin (c)")]).json()["Items"]
    assert sorted(j["ID"] for j in both) == sorted([a, b])
    bad = gateway.http.get(JOBS, params={"labels": "team in ()"})
    assert bad.status_code == 400 and bad.json()["Message"].startswith("labels:")
