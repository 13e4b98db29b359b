"""An agent that dies mid-run loses its lease; the execution is retried on another agent."""

from __future__ import annotations

from typing import Any

from compute_agent.executors.docker import EXECUTION_LABEL
from tests.conftest import Cluster, wait_for
from tests.specs import docker_job


def test_agent_killed_mid_run_is_retried_on_another_agent(cluster: Cluster, docker_engine: Any) -> None:
    gateway = cluster.gateway()
    first = cluster.agent(gateway)
    job_id = gateway.submit(docker_job("echo started; sleep 2; echo finished"))

    def running() -> dict[str, Any] | None:
        executions = gateway.executions(job_id)
        return executions[0] if executions and executions[0]["ComputeState"]["StateType"] == "Running" else None

    lost = wait_for(running, timeout=60, what="the first execution to run")
    first.kill()
    cluster.agent(gateway)
    job = gateway.wait_for_job(job_id, timeout=60)

    assert job["State"]["StateType"] == "Completed"
    failed, retried = gateway.executions(job_id)
    assert failed["ID"] == lost["ID"]
    assert failed["ComputeState"]["StateType"] == "Failed"
    assert "lease expired" in failed["ComputeState"]["Message"]
    assert retried["ComputeState"]["StateType"] == "Completed"
    assert retried["NodeID"] != failed["NodeID"]
    assert retried["PartitionIndex"] == failed["PartitionIndex"] == 0
    assert retried["Attempt"] == 2
    assert retried["RunOutput"]["Stdout"] == "started\nfinished\n"

    # the killed agent could not remove its container; when that node starts again, it does
    label = {"label": f"{EXECUTION_LABEL}={lost['ID']}"}
    assert docker_engine.api.containers(all=True, filters=label)
    cluster.agent(gateway, data_dir=first.data_dir)
    wait_for(lambda: not docker_engine.api.containers(all=True, filters=label), timeout=30,
             what="the restarted agent to remove its leftover container")
