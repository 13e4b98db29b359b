"""Completions in batches: `POST /api/v1/compute/completions` ends several executions in one transaction and
fills the slots they free; the agent's `Completions` sends those that end together in one request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from compute_agent.completions import GATHER, Completions
from compute_agent.errors import GatewayError
from compute_agent.gateway_client import GatewayClient
from gateway.completers import WINDOW, RecentCompleters
from tests.conftest import Cluster, Gateway
from tests.fakes import NODE_INFO, WASM_JOB

COMPLETIONS = "/api/v1/compute/completions"


def _node(gateway: Gateway) -> tuple[str, dict[str, str]]:
    registered = gateway.http.post("/api/v1/compute/register", json=NODE_INFO).json()
    return registered["Credential"], {"Authorization": f"Bearer {registered['Credential']}"}


def _claim(gateway: Gateway, auth: dict[str, str], jobs: int) -> list[dict[str, Any]]:
    """Submit `jobs` jobs and claim them all; their assignments, in the order of submission."""
    job_ids = [gateway.submit(WASM_JOB) for _ in range(jobs)]
    polled = gateway.http.post("/api/v1/compute/poll", headers=auth, json={"FreeSlots": jobs, "Wait": 1})
    assert polled.status_code == 200, polled.text
    claimed = {e["JobID"]: e for e in polled.json()["Executions"]}
    assert set(claimed) == set(job_ids)
    return [claimed[job_id] for job_id in job_ids]


def _state(gateway: Gateway, assignment: dict[str, Any]) -> str:
    [execution] = gateway.executions(assignment["JobID"])
    return str(execution["ComputeState"]["StateType"])


def test_a_batch_completes_its_executions_in_one_transaction_and_fills_the_freed_slots(cluster: Cluster) -> None:
    gateway = cluster.gateway(poll_seconds="2", lease_seconds="60")
    _, auth = _node(gateway)
    first, second, third = _claim(gateway, auth, 3)
    waiting = [gateway.submit(WASM_JOB) for _ in range(3)]
    answer = gateway.http.post(COMPLETIONS, headers=auth, json={"Slots": 3, "Completions": [
        {"ExecutionID": first["ExecutionID"], "ExitCode": 0, "Stdout": "one\n"},
        {"ExecutionID": "e-unknown", "ExitCode": 0},
        {"ExecutionID": second["ExecutionID"], "ExitCode": 3, "Stderr": "two\n",
         "Logs": [{"Stream": "stderr", "Offset": 0, "Data": "two\n"}]},
    ]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["Rejected"] == [{"ExecutionID": "e-unknown", "Status": 404,
                                          "Message": "execution e-unknown is not assigned to this node"}]
    # two slots freed of three (the third still runs): the two oldest waiting jobs were taken for them
    assert sorted(e["JobID"] for e in answer.json()["Executions"]) == sorted(waiting[:2])

    ended = [gateway.executions(a["JobID"])[0] for a in (first, second)]
    assert [e["ComputeState"]["StateType"] for e in ended] == ["Completed", "Completed"]
    assert ended[0]["RunOutput"]["Stdout"] == "one\n" and ended[1]["RunOutput"]["ExitCode"] == 3
    assert ended[0]["ModifyTime"] == ended[1]["ModifyTime"]  # one transaction
    assert gateway.http.get(f"/api/v1/orchestrator/jobs/{second['JobID']}/logs",
                            params={"follow": "false"}).text.count("two") == 1
    assert _state(gateway, third) == "BidAccepted"

    again = gateway.http.post(COMPLETIONS, headers=auth, json={"Completions": [
        {"ExecutionID": first["ExecutionID"], "ExitCode": 0}, {"ExecutionID": third["ExecutionID"], "ExitCode": 0}]})
    assert again.status_code == 200, again.text
    [refused] = again.json()["Rejected"]
    assert refused["ExecutionID"] == first["ExecutionID"] and refused["Status"] == 409
    assert again.json()["Executions"] == []  # no Slots: nothing taken
    assert _state(gateway, third) == "Completed"


def test_a_published_completion_whose_upload_is_missing_is_refused_and_fails_alone(cluster: Cluster) -> None:
    gateway = cluster.gateway(poll_seconds="2", lease_seconds="60")
    _, auth = _node(gateway)
    published, plain = _claim(gateway, auth, 2)
    answer = gateway.http.post(COMPLETIONS, headers=auth, json={"Completions": [
        {"ExecutionID": published["ExecutionID"], "ExitCode": 0, "Published": True},
        {"ExecutionID": plain["ExecutionID"], "ExitCode": 0}]})
    assert answer.status_code == 200, answer.text
    [refused] = answer.json()["Rejected"]
    assert refused["ExecutionID"] == published["ExecutionID"] and refused["Status"] == 409
    assert "no upload was requested" in refused["Message"]
    states = [e["ComputeState"]["StateType"] for e in gateway.executions(published["JobID"])]
    assert sorted(states) == ["Failed", "New"]  # failed, and retried
    assert _state(gateway, plain) == "Completed"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "Completions"),
    ({"Completions": []}, "Completions"),
    ({"Completions": [{"ExitCode": 0}]}, "Completions[0].ExecutionID"),
    ({"Completions": "{first}"}, "Completions"),
    ({"Completions": [{"ExecutionID": "{first}", "ExitCode": 0}, {"ExecutionID": "{second}", "ExitCode": "0"}]},
     "Completions[1].ExitCode"),
    ({"Completions": [{"ExecutionID": "{first}", "ExitCode": 0, "Logs": [{"Stream": "stdin"}]}]},
     "Completions[0].Logs[0].Stream"),
    ({"Completions": [{"ExecutionID": "{first}", "ExitCode": 0}, {"ExecutionID": "{first}", "ExitCode": 0}]},
     "Completions"),
    ({"Completions": [{"ExecutionID": "{first}", "ExitCode": 0}], "Slots": -1}, "Slots"),
])
def test_a_bad_batch_is_refused_whole_naming_the_field(cluster: Cluster, body: dict[str, Any], field: str) -> None:
    gateway = cluster.gateway(poll_seconds="2", lease_seconds="60")
    _, auth = _node(gateway)
    first, second = _claim(gateway, auth, 2)
    text = str(body).replace("'", '"').replace("{first}", first["ExecutionID"]).replace(
        "{second}", second["ExecutionID"])
    answer = gateway.http.post(COMPLETIONS, headers=auth | {"Content-Type": "application/json"}, content=text)
    assert answer.status_code == 400, answer.text
    assert answer.json()["Message"].startswith(field + ":"), answer.text
    assert [_state(gateway, a) for a in (first, second)] == ["BidAccepted", "BidAccepted"]  # nothing lost


def _reporting(gateway: Gateway, credential: str, gather: bool,
               reports: Callable[[Completions], Awaitable[list[BaseException | None]]]) -> tuple[
                   list[BaseException | None], list[dict[str, Any]]]:
    """Run `reports` with a node's `Completions` (4 executions running); what they gave, and what was taken."""
    taken: list[dict[str, Any]] = []

    async def take(assignments: list[dict[str, Any]]) -> None:
        taken.extend(assignments)

    async def main() -> list[BaseException | None]:
        client = GatewayClient(gateway.url, poll_seconds=2)
        client.credential = credential
        completions = Completions(client, running=lambda: 4, take=take, slots=lambda: 4, gather=gather)
        try:
            return await reports(completions)
        finally:
            await completions.close()
            await client.aclose()

    return asyncio.run(main()), taken


def test_completions_that_end_together_go_in_one_request_while_the_gateway_is_shared(cluster: Cluster) -> None:
    """What ends while the node's other executions run waits for them (at most GATHER seconds); the gateway's
    refusal of one reaches its own report only; the answer's assignments are handed over."""
    gateway = cluster.gateway(poll_seconds="2", lease_seconds="60")
    credential, auth = _node(gateway)
    first, second, third, fourth = _claim(gateway, auth, 4)
    next_job = gateway.submit(WASM_JOB)

    async def reports(completions: Completions) -> list[BaseException | None]:
        together = await asyncio.gather(
            completions.report(first["ExecutionID"], {"ExitCode": 0}),
            completions.report("e-unknown", {"ExitCode": 0}),
            completions.report(second["ExecutionID"], {"ExitCode": 0}),
            return_exceptions=True)
        # one ends while the others still run: it goes on its own once GATHER has passed
        await asyncio.wait_for(completions.report(third["ExecutionID"], {"ExitCode": 0}), GATHER + 10)
        return together

    (first_report, unknown_report, second_report), taken = _reporting(gateway, credential, True, reports)
    assert first_report is None and second_report is None
    assert isinstance(unknown_report, GatewayError) and unknown_report.status == 404
    ended = [gateway.executions(a["JobID"])[0] for a in (first, second, third)]
    assert [e["ComputeState"]["StateType"] for e in ended] == ["Completed"] * 3
    assert ended[0]["ModifyTime"] == ended[1]["ModifyTime"] != ended[2]["ModifyTime"]
    assert [a["JobID"] for a in taken] == [next_job]  # the slots freed, filled with the one job waiting
    assert _state(gateway, fourth) == "BidAccepted"


def test_an_agent_alone_on_its_gateway_sends_each_completion_at_once(cluster: Cluster) -> None:
    """The gateway's answer to a node no other node reports beside says not to gather: each completion goes in a
    request of its own, beside the others."""
    gateway = cluster.gateway(poll_seconds="2", lease_seconds="60")
    credential, auth = _node(gateway)
    assignments = _claim(gateway, auth, 3)
    answer = gateway.http.post(COMPLETIONS, headers=auth, json={"Completions": [
        {"ExecutionID": assignments[0]["ExecutionID"], "ExitCode": 0}]})
    assert answer.status_code == 200 and answer.json()["Gather"] is False, answer.text

    async def reports(completions: Completions) -> list[BaseException | None]:
        await completions.report(assignments[1]["ExecutionID"], {"ExitCode": 0})  # the gateway says: alone
        return await asyncio.gather(completions.report(assignments[2]["ExecutionID"], {"ExitCode": 0}),
                                    completions.report("e-unknown", {"ExitCode": 0}), return_exceptions=True)

    (report, unknown_report), _ = _reporting(gateway, credential, True, reports)
    assert report is None and isinstance(unknown_report, GatewayError) and unknown_report.status == 404
    ended = [gateway.executions(a["JobID"])[0] for a in assignments]
    assert [e["ComputeState"]["StateType"] for e in ended] == ["Completed"] * 3
    assert len({e["ModifyTime"] for e in ended}) == 3  # three transactions


def test_the_gateway_says_to_gather_while_other_nodes_report_completions() -> None:
    completers = RecentCompleters()
    assert not completers.shared("n-1", 10.0)
    assert not completers.shared("n-1", 10.01)  # the same node again
    assert completers.shared("n-2", 10.02)
    assert completers.shared("n-1", 10.02 + WINDOW / 2)
    assert not completers.shared("n-1", 10.02 + 2 * WINDOW)  # n-2 has not reported for a while
    assert completers.shared("n-3", 10.02 + 2 * WINDOW)
