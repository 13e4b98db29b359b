"""Stopping a job: the running task is gone within seconds (the waiting long-poll carries the cancellation)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from compute_agent.executors.docker import EXECUTION_LABEL
from tests.conftest import Cluster, Gateway, shoal_command, wait_for
from tests.specs import docker_job, wasm_job

POLL_SECONDS = 20  # a cancellation that waited for the poll to time out would miss every deadline below


def shoal(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shoal_command(*args, "--api-url", gateway.url), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("make_job", [lambda: wasm_job("spin"), lambda: docker_job("sleep 300")],
                         ids=["wasm", "docker"])
def test_stop_cancels_the_running_task(cluster: Cluster, request: pytest.FixtureRequest,
                                       make_job: Callable[[], dict[str, Any]]) -> None:
    docker = request.getfixturevalue("docker_engine") if "docker" in request.node.name else None
    gateway = cluster.gateway(poll_seconds=str(POLL_SECONDS), lease_seconds="90")
    cluster.agent(gateway)
    job_id = gateway.submit(make_job())
    wait_for(lambda: gateway.executions(job_id)[0]["ComputeState"]["StateType"] == "Running", timeout=60,
             what="the task to run")

    stopped = shoal(gateway, "job", "stop", job_id[:10], "--reason", "not needed")
    assert stopped.returncode == 0, stopped.stderr
    assert f"Job {job_id[:10]} stopped" in stopped.stdout
    job = gateway.job(job_id)
    assert job["State"] == {"StateType": "Stopped", "Message": "not needed"}

    def cancelled() -> dict[str, Any] | None:
        [execution] = gateway.executions(job_id)
        return execution if execution["ComputeState"]["StateType"] == "Cancelled" else None

    execution = wait_for(cancelled, timeout=10, what="the agent to cancel the execution")
    assert execution["DesiredState"]["StateType"] == "Stopped"
    assert execution["ComputeState"]["Message"] == "Execution stop requested because job has been stopped"
    if docker is not None:
        label = {"label": f"{EXECUTION_LABEL}={execution['ID']}"}
        wait_for(lambda: not docker.api.containers(all=True, filters=label), timeout=10, what="the container to go")

    again = shoal(gateway, "job", "stop", job_id, "--quiet")
    assert again.returncode == 0 and again.stdout == ""
    assert gateway.job(job_id)["State"]["Message"] == "not needed"


def test_a_task_a_completion_brought_is_cancelled_by_the_poll_that_waits_meanwhile(cluster: Cluster) -> None:
    """An agent's waiting poll names the executions it ran when it was sent; one that a completion brought since
    is not among them, and stopping it must still reach the agent through that poll, not after it times out."""
    gateway = cluster.gateway(poll_seconds=str(POLL_SECONDS), lease_seconds="90", queue_timeout="600")
    # both wait before the agent polls: with one slot, its poll takes the first and the first's completion the second
    first = gateway.submit(wasm_job("echo", "first"))
    second = gateway.submit(wasm_job("spin"))
    cluster.agent(gateway, "--max-executions", "1")
    wait_for(lambda: gateway.executions(second)[0]["ComputeState"]["StateType"] == "Running", timeout=60,
             what="the second task to run")
    assert gateway.job(first)["State"]["StateType"] == "Completed"

    assert gateway.http.delete(f"/api/v1/orchestrator/jobs/{second}").status_code == 200
    wait_for(lambda: gateway.executions(second)[0]["ComputeState"]["StateType"] == "Cancelled", timeout=10,
             what="the agent to cancel the execution")


def test_a_completed_job_cannot_be_stopped_and_a_waiting_one_can(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    cluster.agent(gateway)
    done = gateway.submit(wasm_job("echo", "done"))
    assert gateway.wait_for_job(done)["State"]["StateType"] == "Completed"
    refused = gateway.http.delete(f"/api/v1/orchestrator/jobs/{done}")
    assert refused.status_code == 409
    assert "a completed job cannot be stopped" in refused.json()["Message"]
    cli = shoal(gateway, "job", "stop", done)
    assert cli.returncode == 1 and "a completed job cannot be stopped" in cli.stderr

    idle = cluster.gateway(queue_timeout="600")  # no agent: the job waits
    waiting = idle.submit(wasm_job("echo", "never"))
    assert idle.http.delete(f"/api/v1/orchestrator/jobs/{waiting}").status_code == 200
    assert idle.job(waiting)["State"]["StateType"] == "Stopped"
    assert [e["ComputeState"]["StateType"] for e in idle.executions(waiting)] == ["Cancelled"]
    assert idle.http.delete("/api/v1/orchestrator/jobs/j-nope").status_code == 404
