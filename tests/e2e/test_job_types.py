"""ops, daemon and service jobs end to end with several agents."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import Cluster, Gateway, Process, shoal_command, wait_for
from tests.specs import wasm_job


def node_of(agent: Process) -> str:
    assert agent.data_dir is not None
    return str(json.loads((agent.data_dir / "node.json").read_text())["NodeID"])


def states_by_node(gateway: Gateway, job_id: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for execution in gateway.executions(job_id):
        found.setdefault(execution["NodeID"], []).append(execution["ComputeState"]["StateType"])
    return found


def typed(kind: str, *args: str, **options: Any) -> dict[str, Any]:
    job = wasm_job(*args, **options)
    job["Type"] = kind
    if kind != "service":
        job.pop("Count")
    return job


def test_ops_runs_once_on_every_matching_node(cluster: Cluster, probe_wasm: Any) -> None:
    gateway = cluster.gateway()
    eu, us = (node_of(cluster.agent(gateway, "--labels", f"zone={z}")) for z in ("eu", "us"))
    ran = subprocess.run(shoal_command("wasm", "run", str(probe_wasm), "--target", "all", "--id-only", "--api-url",
                                       gateway.url, "--", "env"), capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    job_id = ran.stdout.strip()
    job = gateway.job(job_id)
    assert (job["Type"], job["State"]["StateType"], job["Count"]) == ("ops", "Completed", 0)
    assert states_by_node(gateway, job_id) == {eu: ["Completed"], us: ["Completed"]}
    env = dict(line.split("=", 1) for line in gateway.executions(job_id)[0]["RunOutput"]["Stdout"].splitlines())
    assert env["BACALHAU_JOB_TYPE"] == "ops" and env["BACALHAU_PARTITION_COUNT"] == "0"

    only_us = typed("ops", "echo", "us")
    only_us["Constraints"] = [{"Key": "zone", "Operator": "=", "Values": ["us"]}]
    one = gateway.wait_for_job(gateway.submit(only_us))
    assert one["State"]["StateType"] == "Completed"
    assert states_by_node(gateway, one["ID"]) == {us: ["Completed"]}

    nowhere = typed("ops", "echo", "x")
    nowhere["Constraints"] = [{"Key": "zone", "Operator": "=", "Values": ["mars"]}]
    failed = gateway.job(gateway.submit(nowhere))
    assert failed["State"]["StateType"] == "Failed" and "not enough nodes" in failed["State"]["Message"]


def test_an_ops_job_with_a_failed_execution_fails(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    cluster.agent(gateway)
    job = typed("ops", "spin")
    job["Tasks"][0]["Timeouts"]["ExecutionTimeout"] = 1
    done = gateway.wait_for_job(gateway.submit(job), timeout=30)
    assert done["State"] == {"StateType": "Failed", "Message": "Job failed because one or more executions failed"}


def test_daemon_runs_on_every_node_including_nodes_that_join_later(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    first = node_of(cluster.agent(gateway))
    job_id = gateway.submit(typed("daemon", "spin"))
    wait_for(lambda: states_by_node(gateway, job_id) == {first: ["Running"]}, what="the daemon on the first node")
    second = node_of(cluster.agent(gateway))
    wait_for(lambda: states_by_node(gateway, job_id) == {first: ["Running"], second: ["Running"]},
             what="the daemon on the node that joined")
    assert gateway.job(job_id)["State"]["StateType"] == "Running"
    assert gateway.http.delete(f"/api/v1/orchestrator/jobs/{job_id}").status_code == 200
    wait_for(lambda: states_by_node(gateway, job_id) == {first: ["Cancelled"], second: ["Cancelled"]},
             what="both daemons to stop")


def test_service_replicas_are_replaced_when_lost(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    doomed = cluster.agent(gateway, "--max-executions", "4")
    lost = node_of(doomed)
    job_id = gateway.submit(typed("service", "spin", count=2))
    wait_for(lambda: states_by_node(gateway, job_id) == {lost: ["Running", "Running"]}, what="two replicas")
    doomed.kill()
    rescuer = node_of(cluster.agent(gateway, "--max-executions", "4"))
    wait_for(lambda: states_by_node(gateway, job_id) == {lost: ["Failed", "Failed"], rescuer: ["Running", "Running"]},
             timeout=60, what="the replicas to be replaced on the other node")
    executions = gateway.executions(job_id)
    assert sorted(e["PartitionIndex"] for e in executions if e["NodeID"] == rescuer) == [0, 1]
    assert gateway.job(job_id)["State"]["StateType"] == "Running"
    assert gateway.http.delete(f"/api/v1/orchestrator/jobs/{job_id}").status_code == 200


def test_a_service_replica_that_keeps_exiting_fails_the_job(cluster: Cluster) -> None:
    gateway = cluster.gateway(max_attempts="3")
    cluster.agent(gateway)
    job = gateway.wait_for_job(gateway.submit(typed("service", "echo", "bye", count=1)), timeout=60)
    assert job["State"] == {"StateType": "Failed", "Message": "Job failed because a service replica exited 3 times"}
    assert [e["Attempt"] for e in gateway.executions(job["ID"])] == [1, 2, 3]
