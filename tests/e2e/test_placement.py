"""Placement end to end: labels and constraints, preferences, resources, no suitable node, queueing, timeouts."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import Cluster, Gateway, Process, shoal_command, wait_for
from tests.specs import PROBE, wasm_job


def node_of(agent: Process) -> str:
    assert agent.data_dir is not None
    return str(json.loads((agent.data_dir / "node.json").read_text())["NodeID"])


def constrained(*constraints: tuple[str, str, list[str]], **options: Any) -> dict[str, Any]:
    job = wasm_job(*(options.pop("args", None) or ["echo", "placed"]), **options)
    job["Constraints"] = [{"Key": k, "Operator": op, "Values": v} for k, op, v in constraints]
    return job


def polled_since(gateway: Gateway, node_id: str, seen: int) -> bool:
    node = gateway.http.get(f"/api/v1/orchestrator/nodes/{node_id}").json()["Node"]
    return int(node["ConnectionState"]["LastHeartbeat"]) > seen


def heartbeat(gateway: Gateway, node_id: str) -> int:
    return int(gateway.http.get(f"/api/v1/orchestrator/nodes/{node_id}").json()["Node"]["ConnectionState"]
               ["LastHeartbeat"])


def test_constraints_choose_the_node_and_preferences_lean_to_one(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    eu = node_of(cluster.agent(gateway, "--labels", "zone=eu,size=4"))
    us = node_of(cluster.agent(gateway, "--labels", "zone=us,size=16"))
    cases = [
        ([("zone", "=", ["us"])], us), ([("zone", "in", ["eu", "ap"])], eu), ([("zone", "notin", ["eu"])], us),
        ([("size", "gt", ["8"])], us), ([("size", "lt", ["8"])], eu), ([("zone", "!=", ["eu"])], us),
    ]
    for constraints, expected in cases:
        job, execution = gateway.run(constrained(*constraints))
        assert job["State"]["StateType"] == "Completed"
        assert execution["NodeID"] == expected, constraints
    for _ in range(4):  # both nodes could take it; the preference sends it to eu every time
        _, execution = gateway.run(constrained(("favour_zone", "=", ["eu"])))
        assert execution["NodeID"] == eu

    for selector, expected in (("zone=us", us), ("zone in (eu, ap),size<8", eu), ("!gpu,size>8", us)):
        ran = subprocess.run(shoal_command("wasm", "run", str(PROBE), "--constraints", selector, "--id-only",
                                           "--api-url", gateway.url, "--", "echo", "x"),
                             capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        [execution] = gateway.executions(ran.stdout.strip())
        assert execution["NodeID"] == expected, selector
    bad = subprocess.run(shoal_command("wasm", "run", str(PROBE), "--constraints", "zone=~eu", "--api-url",
                                       gateway.url, "--", "echo", "x"), capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--constraints" in bad.stderr and "'zone=~eu'" in bad.stderr


def test_no_suitable_node_fails_at_once_naming_each_node(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    node = node_of(cluster.agent(gateway, "--labels", "zone=eu"))
    job_id = gateway.submit(constrained(("zone", "=", ["mars"]), ("gpu", "exists", [])))
    job = gateway.job(job_id)
    assert job["State"]["StateType"] == "Failed"
    assert job["State"]["Message"].splitlines() == [
        "not enough nodes to run job. requested: 1, available: 1, suitable: 0.",
        f"• Node {node}: does not match constraint zone=mars; does not match constraint gpu",
    ]
    assert gateway.executions(job_id) == []
    too_big = wasm_job("echo", "big")
    too_big["Tasks"][0]["Resources"] = {"Memory": "1Tb"}
    failed = gateway.job(gateway.submit(too_big))
    assert "not enough memory: requested 1e+12 B" in failed["State"]["Message"]


def test_a_node_is_never_over_committed(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    node = node_of(cluster.agent(gateway, "--cpu", "1", "--max-executions", "4"))
    hungry = []
    for _ in range(2):
        job = wasm_job("spin")
        job["Tasks"][0]["Resources"] = {"CPU": "600m"}
        hungry.append(gateway.submit(job))
    wait_for(lambda: any(gateway.executions(j)[0]["ComputeState"]["StateType"] == "Running" for j in hungry),
             what="one spin to run")
    seen = heartbeat(gateway, node)
    wait_for(lambda: polled_since(gateway, node, seen), what="a poll with three free slots")
    states = sorted(gateway.executions(j)[0]["ComputeState"]["StateType"] for j in hungry)
    assert states == ["New", "Running"]  # 1.2 cores asked of a 1-core node: the second waits
    running = next(j for j in hungry if gateway.executions(j)[0]["ComputeState"]["StateType"] == "Running")
    waiting = next(j for j in hungry if j != running)
    assert gateway.http.delete(f"/api/v1/orchestrator/jobs/{running}").status_code == 200
    wait_for(lambda: gateway.executions(waiting)[0]["ComputeState"]["StateType"] == "Running",
             what="the second spin to run once the first is gone")
    assert gateway.http.delete(f"/api/v1/orchestrator/jobs/{waiting}").status_code == 200


def test_a_queued_job_runs_when_a_suitable_node_joins(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    cluster.agent(gateway, "--labels", "zone=eu")
    job = constrained(("zone", "=", ["later"]))
    job["Tasks"][0]["Timeouts"]["QueueTimeout"] = 120
    job_id = gateway.submit(job)
    queued = gateway.job(job_id)
    assert queued["State"]["StateType"] == "Queued"
    assert "does not match constraint zone=later" in queued["State"]["Message"]
    late = node_of(cluster.agent(gateway, "--labels", "zone=later"))
    assert gateway.wait_for_job(job_id)["State"]["StateType"] == "Completed"
    assert gateway.executions(job_id)[0]["NodeID"] == late


def test_queue_and_total_timeouts_fail_the_job(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    cluster.agent(gateway)
    queued = constrained(("zone", "=", ["nowhere"]))
    queued["Tasks"][0]["Timeouts"]["QueueTimeout"] = 1
    job = gateway.wait_for_job(gateway.submit(queued), timeout=30)
    assert job["State"]["StateType"] == "Failed"
    assert job["State"]["Message"].startswith("Job waited longer than its queue timeout (1s): not enough nodes")

    spin = wasm_job("spin")
    spin["Tasks"][0]["Timeouts"] = {"TotalTimeout": 2}
    spin_id = gateway.submit(spin)
    job = gateway.wait_for_job(spin_id, timeout=30)
    assert job["State"]["StateType"] == "Failed"
    assert "timed out" in job["State"]["Message"]
    wait_for(lambda: gateway.executions(spin_id)[-1]["ComputeState"]["StateType"] in ("Cancelled", "Failed"),
             what="the spin to end")
