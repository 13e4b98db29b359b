"""When a job fails, its other running executions are cancelled on their agents: the task is stopped (the
container killed and removed, the WASM instance interrupted) and the execution ends Cancelled."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from compute_agent.executors.docker import EXECUTION_LABEL
from tests.conftest import Cluster, free_port, wait_for
from tests.specs import docker_job, wasm_job


@pytest.fixture
def flaky_url() -> Iterator[str]:
    """A URL that answers 404 the first time and serves a file after that."""
    calls: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append(self.path)
            if len(calls) == 1:
                self.send_error(404)
                return
            body = b"input\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    server.shutdown()


def spinning_wasm(url: str) -> dict[str, Any]:
    source = {"Target": "/data", "Source": {"Type": "urlDownload", "Params": {"URL": url}}}
    return wasm_job("spin", count=2, inputs=[source])


def sleeping_docker(url: str) -> dict[str, Any]:
    job = docker_job("sleep 120", count=2)
    job["Tasks"][0]["InputSources"] = [{"Target": "/data", "Source": {"Type": "urlDownload", "Params": {"URL": url}}}]
    return job


@pytest.mark.parametrize("make_job", [spinning_wasm, sleeping_docker], ids=["wasm", "docker"])
def test_a_failed_job_cancels_its_running_executions(cluster: Cluster, flaky_url: str, request: pytest.FixtureRequest,
                                                     make_job: Callable[[str], dict[str, Any]]) -> None:
    docker = request.getfixturevalue("docker_engine") if make_job is sleeping_docker else None
    gateway = cluster.gateway(max_attempts="1")
    cluster.agent(gateway, "--max-executions", "2")
    job_id = gateway.submit(make_job(flaky_url))
    job = gateway.wait_for_job(job_id)
    assert job["State"]["StateType"] == "Failed"
    assert "could not download" in job["State"]["Message"]

    def settled() -> list[dict[str, Any]] | None:
        executions = gateway.executions(job_id)
        states = sorted(e["ComputeState"]["StateType"] for e in executions)
        return executions if states == ["Cancelled", "Failed"] else None

    executions = wait_for(settled, timeout=30, what="the running execution to be cancelled")
    cancelled = next(e for e in executions if e["ComputeState"]["StateType"] == "Cancelled")
    assert cancelled["DesiredState"]["StateType"] == "Stopped"
    if docker is not None:
        label = {"label": f"{EXECUTION_LABEL}={cancelled['ID']}"}
        wait_for(lambda: not docker.api.containers(all=True, filters=label), timeout=30,
                 what="the cancelled container to be removed")
