"""Logs: shipped while the task runs, read as text, NDJSON, Server-Sent Events or a WebSocket, and followed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import Cluster, Gateway, one_agent_stack, shoal_command, wait_for
from tests.fakes import NODE_INFO
from tests.specs import docker_job, wasm_job


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from one_agent_stack(tmp_path_factory, "logs", "--max-executions", "4")


def logs_url(gateway: Gateway, job_id: str) -> str:
    return f"{gateway.url}/api/v1/orchestrator/jobs/{job_id}/logs"


def test_lines_arrive_while_the_task_runs_and_follow_ends_with_it(stack: Gateway, docker_engine: Any) -> None:
    job_id = stack.submit(docker_job("echo one; sleep 1; echo two >&2; sleep 1; echo three"))
    seen: list[tuple[int, str, str]] = []
    with httpx.stream("GET", logs_url(stack, job_id), params={"follow": "true", "format": "ndjson"},
                      timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            entry = json.loads(line)
            seen.append((entry["Type"], entry["Line"], stack.job(job_id)["State"]["StateType"]))
    assert [(kind, text) for kind, text, _ in seen] == [(1, "one"), (2, "two"), (1, "three")]
    assert seen[0][2] == "Running"  # the first line came while the task was still running
    assert stack.job(job_id)["State"]["StateType"] == "Completed"


def test_the_cli_follows_stdout_and_stderr_apart(stack: Gateway, docker_engine: Any) -> None:
    job_id = stack.submit(docker_job("echo out; echo err >&2; sleep 1; echo late"))
    followed = subprocess.run(shoal_command("job", "logs", "-f", job_id[:10], "--api-url", stack.url),
                              capture_output=True, text=True, timeout=60)
    assert followed.returncode == 0, followed.stderr
    assert (followed.stdout, followed.stderr) == ("out\nlate\n", "err\n")
    tail = subprocess.run(shoal_command("job", "logs", job_id, "--tail", "1", "--api-url", stack.url),
                          capture_output=True, text=True, timeout=60)
    assert tail.stdout + tail.stderr == "late\n"


def test_run_follow_prints_lines_as_the_task_prints_them(stack: Gateway, docker_engine: Any) -> None:
    command = shoal_command("docker", "run", "--follow", "--api-url", stack.url, "shoal-test/busybox:1", "--",
                            "/bin/sh", "-c", "echo first; echo oops >&2; sleep 2; echo second")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        submitted = process.stdout.readline()
        assert submitted.startswith("Job successfully submitted. Job ID: "), submitted
        job_id = submitted.split("Job ID: ")[1].split()[0]
        assert process.stdout.readline() == "first\n"
        assert stack.job(job_id)["State"]["StateType"] == "Running"  # shown while the task still runs
        rest, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert (rest, errors) == ("second\n", "oops\n")
    assert stack.job(job_id)["State"]["StateType"] == "Completed"


def test_run_follow_exits_1_when_the_job_fails(stack: Gateway, tmp_path: Any) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps(wasm_job("spin", timeout=1)))
    followed = subprocess.run(shoal_command("job", "run", str(spec), "-f", "--api-url", stack.url),
                              capture_output=True, text=True, timeout=60)
    assert followed.returncode == 1
    assert "Error: job failed" in followed.stderr


def test_every_format_of_a_finished_job(stack: Gateway) -> None:
    job, execution = stack.run(wasm_job("echo", "hello logs"))
    url = logs_url(stack, job["ID"])
    text = httpx.get(url)
    assert (text.status_code, text.text) == (200, "hello logs\n")
    assert text.headers["x-execution-id"] == execution["ID"]
    ndjson = httpx.get(url, headers={"Accept": "application/x-ndjson"})
    assert [json.loads(line) for line in ndjson.text.splitlines()] == [
        {"Type": 1, "Stream": "stdout", "Line": "hello logs", "ExecutionID": execution["ID"]}]
    sse = httpx.get(url, headers={"Accept": "text/event-stream"})
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert sse.text == "event: log\ndata: " + json.dumps(
        {"Type": 1, "Stream": "stdout", "Line": "hello logs", "ExecutionID": execution["ID"]}) + "\n\n"
    with connect(url.replace("http://", "ws://") + "?follow=true") as websocket:
        messages = [json.loads(message) for message in websocket]
    assert messages == [{"value": {"Type": 1, "Stream": "stdout", "Line": "hello logs"}, "error": ""}]


def test_errors_are_clear(stack: Gateway) -> None:
    job, _ = stack.run(wasm_job("exit", "3"))
    assert httpx.get(logs_url(stack, job["ID"])).text == "exiting with 3\n"
    missing = httpx.get(logs_url(stack, job["ID"]), params={"execution_id": "e-nope"})
    assert missing.status_code == 404 and "has no execution e-nope" in missing.json()["Message"]
    assert httpx.get(logs_url(stack, "j-nope")).status_code == 404
    assert httpx.get(logs_url(stack, job["ID"]), params={"format": "xml"}).status_code == 400
    with connect(logs_url(stack, "j-nope").replace("http://", "ws://")) as websocket:
        assert json.loads(websocket.recv()) == {"error": "job not found: j-nope"}


def test_shipped_logs_are_capped_but_results_keep_everything(cluster: Cluster, tmp_path: Any) -> None:
    gateway = cluster.gateway(max_log_bytes="1000")
    cluster.agent(gateway)
    job, _ = gateway.run(wasm_job("big", "100000"))
    assert job["State"]["StateType"] == "Completed"
    shipped = httpx.get(logs_url(gateway, job["ID"])).text
    assert shipped == ("x" * 64 + "\n") * 15 + "x" * 25 + "\n"  # the first 1000 characters, then the cap
    assert len((gateway.download(job["ID"], tmp_path / "out") / "stdout").read_bytes()) == 100_000
    wait_for(lambda: "are no longer accepted" in cluster.agents[0].output(), what="the agent to note the cap")


def test_the_agent_api_refuses_bad_chunks(stack: Gateway) -> None:
    node = stack.http.post("/api/v1/compute/register", json=NODE_INFO)
    credential = node.json()["Credential"]
    bad = stack.http.post("/api/v1/compute/executions/e-x/logs", headers={"Authorization": f"Bearer {credential}"},
                          json={"Chunks": [{"Stream": "stdin", "Offset": 0, "Data": "x"}]})
    assert bad.status_code == 400 and bad.json()["Message"].startswith("Chunks[0].Stream")
    foreign = stack.http.post("/api/v1/compute/executions/e-x/logs",
                              headers={"Authorization": f"Bearer {credential}"},
                              json={"Chunks": [{"Stream": "stdout", "Offset": 0, "Data": "x"}]})
    assert foreign.status_code == 404
