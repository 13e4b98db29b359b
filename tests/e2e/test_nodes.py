"""Nodes: listing, manual approval, rejection, deletion and disconnection, through the API and the CLI."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import Cluster, Gateway, shoal_command, wait_for
from tests.specs import wasm_job


def shoal(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shoal_command(*args, "--api-url", gateway.url), capture_output=True, text=True, timeout=60)


def nodes(gateway: Gateway, **filters: str) -> list[dict[str, Any]]:
    response = gateway.http.get("/api/v1/orchestrator/nodes", params=filters)
    assert response.status_code == 200, response.text
    return list(response.json()["Nodes"])


def node_id(agent_data_dir: Any) -> str:
    return str(json.loads((agent_data_dir / "node.json").read_text())["NodeID"])


def test_nodes_are_listed_with_labels_engines_and_state(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    agent = cluster.agent(gateway, "--labels", "zone=eu,tier=gold")
    wait_for(lambda: nodes(gateway) and nodes(gateway)[0]["Info"]["ComputeNodeInfo"]["ExecutionEngines"],
             what="the node's first poll")
    [listed] = nodes(gateway)
    info = listed["Info"]
    assert info["NodeID"] == node_id(agent.data_dir)
    assert {"zone": "eu", "tier": "gold"}.items() <= info["Labels"].items()
    assert "wasm" in info["ComputeNodeInfo"]["ExecutionEngines"]
    assert listed["Membership"] == "APPROVED" and listed["ConnectionState"]["Status"] == "CONNECTED"

    described = gateway.http.get(f"/api/v1/orchestrator/nodes/{info['NodeID'][:10]}").json()["Node"]
    assert described["Info"]["NodeID"] == info["NodeID"]
    assert gateway.http.get("/api/v1/orchestrator/nodes/n-nope").status_code == 404
    table = shoal(gateway, "node", "list")
    assert table.returncode == 0, table.stderr
    assert info["NodeID"][:10] in table.stdout and "CONNECTED" in table.stdout and "zone=eu" in table.stdout
    as_yaml = shoal(gateway, "node", "describe", info["NodeID"][:10])
    assert f"NodeID: {info['NodeID']}" in as_yaml.stdout


def test_manual_approval_holds_new_nodes_until_approved(cluster: Cluster) -> None:
    gateway = cluster.gateway(manual_approval="true", queue_timeout="600")
    agent = cluster.agent(gateway)
    pending = node_id(agent.data_dir)
    job_id = gateway.submit(wasm_job("echo", "approved"))

    def heartbeat() -> int:
        return int(gateway.http.get(f"/api/v1/orchestrator/nodes/{pending}").json()["Node"]["ConnectionState"]
                   ["LastHeartbeat"])

    seen = heartbeat()
    wait_for(lambda: heartbeat() > seen, what="a poll after the submission")
    assert gateway.job(job_id)["State"]["StateType"] == "Queued"
    assert [n["Info"]["NodeID"] for n in nodes(gateway, **{"filter-approval": "PENDING"})] == [pending]

    approved = shoal(gateway, "node", "approve", pending[:10])
    assert approved.returncode == 0 and f"Node {pending[:10]} approved" in approved.stdout
    assert gateway.wait_for_job(job_id)["State"]["StateType"] == "Completed"
    assert gateway.executions(job_id)[0]["NodeID"] == pending


def test_a_rejected_node_loses_its_work_and_cannot_poll(cluster: Cluster) -> None:
    gateway = cluster.gateway(max_attempts="2")
    agent = cluster.agent(gateway)
    rejected = node_id(agent.data_dir)
    job_id = gateway.submit(wasm_job("spin"))
    wait_for(lambda: gateway.executions(job_id)[0]["ComputeState"]["StateType"] == "Running", what="the spin")

    assert shoal(gateway, "node", "reject", rejected, "-m", "untrusted").returncode == 0
    first, retry = gateway.executions(job_id)
    assert first["ComputeState"]["StateType"] == "Failed"
    assert f"node {rejected} has been rejected" in first["ComputeState"]["Message"]
    assert retry["ComputeState"]["StateType"] == "New" and retry["Attempt"] == 2
    assert nodes(gateway)[0]["Membership"] == "REJECTED"
    wait_for(lambda: "has been rejected" in agent.output(), what="the agent to be refused")
    assert gateway.http.delete(f"/api/v1/orchestrator/jobs/{job_id}").status_code == 200


def test_a_deleted_node_registers_again_as_a_new_node(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    agent = cluster.agent(gateway)
    first = node_id(agent.data_dir)
    assert shoal(gateway, "node", "delete", first).returncode == 0
    wait_for(lambda: node_id(agent.data_dir) != first, what="the agent to register again")
    assert [n["Info"]["NodeID"] for n in nodes(gateway)] == [node_id(agent.data_dir)]


def test_a_silent_node_is_disconnected(cluster: Cluster) -> None:
    gateway = cluster.gateway(disconnect_seconds="2")
    agent = cluster.agent(gateway)
    silent = node_id(agent.data_dir)
    agent.kill()
    wait_for(lambda: [n["Info"]["NodeID"] for n in nodes(gateway, **{"filter-status": "DISCONNECTED"})] == [silent],
             timeout=20, what="the node to be marked DISCONNECTED")
    assert nodes(gateway, **{"filter-status": "CONNECTED"}) == []
    assert gateway.http.get("/api/v1/orchestrator/nodes", params={"filter-status": "gone"}).status_code == 400
