"""A waiting long-poll is woken by a submission: dispatch never waits for the poll period to run out."""

from __future__ import annotations

import concurrent.futures
import time

import httpx

from shoal.client import Client
from tests.conftest import Cluster, wait_for
from tests.fakes import NODE_INFO, WASM_JOB
from tests.specs import wasm_job

POLL_SECONDS = 20


def test_waiting_agent_is_woken_by_each_submission(cluster: Cluster) -> None:
    gateway = cluster.gateway(poll_seconds=str(POLL_SECONDS), lease_seconds="90")
    cluster.agent(gateway)
    started = time.monotonic()
    for index in range(5):
        job_id = gateway.submit(wasm_job("echo", str(index)))
        job = gateway.wait_for_job(job_id, timeout=POLL_SECONDS * 3)
        assert job["State"]["StateType"] == "Completed"
    # five jobs, each found by a poll that was waiting when it was submitted: had any of them waited for a
    # poll to time out instead of being woken, this would take at least one whole poll period
    assert time.monotonic() - started < POLL_SECONDS


def test_idle_polls_that_began_together_end_spread_over_their_wait(cluster: Cluster) -> None:
    """Agents that start (or come back) together would otherwise all poll again at the same moment: each poll
    ends in its own quarter-second slot of the last three quarters of its wait, the latest ones first."""
    gateway = cluster.gateway(poll_seconds="4", lease_seconds="30")
    credentials = [gateway.http.post("/api/v1/compute/register", json=NODE_INFO).json()["Credential"]
                   for _ in range(6)]

    def idle_poll(credential: str) -> float:
        started = time.monotonic()
        response = httpx.post(f"{gateway.url}/api/v1/compute/poll", json={"FreeSlots": 1, "Wait": 4},
                              headers={"Authorization": f"Bearer {credential}"}, timeout=30)
        assert response.status_code == 204
        return time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(len(credentials)) as pool:
        took = sorted(pool.map(idle_poll, credentials))
    assert took[0] >= 1.0 and took[-1] <= 4.5, took  # within the last three quarters of Wait (and a little slack)
    assert took[-1] - took[0] >= 0.75, took  # six slots apart: not all at once


def test_a_completion_that_says_the_slots_brings_the_next_execution_and_the_waiting_poll_keeps_waiting(
        cluster: Cluster) -> None:
    """One request and one transaction per job fewer while there is work: the completion fills the slot it frees,
    and the node's poll, which waits meanwhile, is not handed that slot as well."""
    gateway = cluster.gateway(poll_seconds="3", lease_seconds="30")
    registered = gateway.http.post("/api/v1/compute/register", json=NODE_INFO).json()
    auth = {"Authorization": f"Bearer {registered['Credential']}"}
    first_job, second_job = gateway.submit(WASM_JOB), gateway.submit(WASM_JOB)
    polled = gateway.http.post("/api/v1/compute/poll", headers=auth, json={"Slots": 1, "Wait": 1})
    [first] = polled.json()["Executions"]
    assert first["JobID"] == first_job

    def waiting_poll() -> httpx.Response:  # its one slot is taken: it waits
        return httpx.post(f"{gateway.url}/api/v1/compute/poll", headers=auth, json={"Slots": 1, "Wait": 2},
                          timeout=30)

    complete = f"/api/v1/compute/executions/{first['ExecutionID']}/complete"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(waiting_poll)
        refused = gateway.http.post(complete, headers=auth, json={"ExitCode": 0, "Slots": -1})
        assert refused.status_code == 400 and "Slots" in refused.json()["Message"]
        completed = gateway.http.post(complete, headers=auth, json={"ExitCode": 0, "Slots": 1})
        assert completed.status_code == 200, completed.text
        [second] = completed.json()["Executions"]
        assert second["JobID"] == second_job and second["Task"]["Engine"]["Type"] == "wasm"
        assert waiting.result().status_code == 204  # the slot went to the completion, not to the poll as well
    assert gateway.wait_for_job(first_job, timeout=10)["State"]["StateType"] == "Completed"
    assert [e["ComputeState"]["StateType"] for e in gateway.executions(second_job)] == ["BidAccepted"]


def test_a_batch_submitted_through_the_client_runs_every_job_once(cluster: Cluster) -> None:
    """`Client.submit_all`: one request wakes as many waiting polls as the batch has executions."""
    gateway = cluster.gateway(poll_seconds=str(POLL_SECONDS), lease_seconds="90")
    cluster.agent(gateway, "--max-executions", "2")
    cluster.agent(gateway, "--max-executions", "2")
    started = time.monotonic()
    with Client(gateway.url) as client:
        answers = client.submit_all([wasm_job("echo", str(index)) for index in range(12)])
    assert len({answer["JobID"] for answer in answers}) == 12
    for index, answer in enumerate(answers):
        job = gateway.wait_for_job(answer["JobID"], timeout=POLL_SECONDS * 3)
        assert job["State"]["StateType"] == "Completed"
        [execution] = gateway.executions(answer["JobID"])
        assert execution["RunOutput"]["Stdout"] == f"{index}\n"
    assert time.monotonic() - started < POLL_SECONDS  # woken, not found by polls that ran out


def test_a_submission_claims_for_a_waiting_poll_in_its_own_transaction(cluster: Cluster) -> None:
    """The submission takes the execution for the poll waiting on its replica before it answers, and hands it
    over: the poll answers with it at once, with no transaction of its own. A poll its node cannot serve (here,
    one whose engine the job does not use) is left waiting."""
    gateway = cluster.gateway(poll_seconds="10", lease_seconds="30")
    nodes = [gateway.http.post("/api/v1/compute/register", json=NODE_INFO | {"Engines": [engine]}).json()
             for engine in ("docker", "wasm")]

    def poll(node: dict[str, str], engine: str) -> httpx.Response:  # its heartbeat leaves a label to wait for
        body = NODE_INFO | {"Engines": [engine], "Labels": {"polling": "yes"}, "Slots": 2, "Wait": 4}
        return httpx.post(f"{gateway.url}/api/v1/compute/poll", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {node['Credential']}"})

    def waiting(node: dict[str, str]) -> bool:  # registered as waiting before its heartbeat's transaction
        found = gateway.http.get(f"/api/v1/orchestrator/nodes/{node['NodeID']}").json()["Node"]
        return found["Info"]["Labels"].get("polling") == "yes"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        polls = [pool.submit(poll, node, engine) for node, engine in zip(nodes, ("docker", "wasm"), strict=True)]
        wait_for(lambda: all(waiting(node) for node in nodes), timeout=10, what="the polls' heartbeats")
        job_id = gateway.submit(WASM_JOB)
        [execution] = gateway.executions(job_id)  # taken before the submission answered
        assert execution["ComputeState"]["StateType"] == "BidAccepted"
        assert execution["NodeID"] == nodes[1]["NodeID"]
        answer = polls[1].result()
        assert answer.status_code == 200, answer.text
        assert [e["ExecutionID"] for e in answer.json()["Executions"]] == [execution["ID"]]
        assert polls[0].result().status_code == 204  # the docker node's poll waited its time out
