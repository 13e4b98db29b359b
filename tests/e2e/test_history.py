"""Job history through the API and the CLI: Bacalhau's event shapes, topics and messages, in order."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Gateway, one_agent_stack, shoal_command, wait_for
from tests.specs import wasm_job


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from one_agent_stack(tmp_path_factory, "history")


def history(gateway: Gateway, job_id: str, **params: Any) -> dict[str, Any]:
    response = gateway.http.get(f"/api/v1/orchestrator/jobs/{job_id}/history", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_completed_job_tells_its_whole_story(stack: Gateway) -> None:
    job, execution = stack.run(wasm_job("echo", "story"))
    items = history(stack, job["ID"])["Items"]
    told = [(i["Type"], i["Event"]["Topic"], i["Event"]["Message"]) for i in items]
    assert told == [
        ("JobLevel", "Submission", "Job submitted"),
        ("ExecutionLevel", "Scheduling", f"Requested execution on {execution['NodeID']}"),
        ("JobLevel", "State Update", "Running"),
        ("ExecutionLevel", "Execution", "Running"),
        ("ExecutionLevel", "Execution", "Publishing results"),
        ("ExecutionLevel", "Execution", "Completed successfully"),
        ("JobLevel", "State Update", "Job completed"),
    ]
    assert [i["SeqNum"] for i in items] == sorted(i["SeqNum"] for i in items)
    assert items[2]["JobState"] == {"Previous": "Pending", "New": "Running"}
    assert items[5]["ExecutionState"] == {"Previous": "Publishing", "New": "Completed"}
    assert items[5]["Event"]["Details"] == {"ExitCode": 0}
    assert all(i["ExecutionID"] == execution["ID"] for i in items if i["Type"] == "ExecutionLevel")
    assert all(i["JobID"] == job["ID"] and i["JobVersion"] == 1 for i in items)

    assert [i["Type"] for i in history(stack, job["ID"], event_type="job")["Items"]] == ["JobLevel"] * 3
    assert len(history(stack, job["ID"], event_type="execution", execution_id=execution["ID"])["Items"]) == 4
    included = stack.http.get(f"/api/v1/orchestrator/jobs/{job['ID']}", params={"include": "history"}).json()
    assert [i["SeqNum"] for i in included["History"]["Items"]] == [i["SeqNum"] for i in items]


def test_history_pages_with_next_token(stack: Gateway) -> None:
    job, _ = stack.run(wasm_job("echo", "pages"))
    seen, token = [], ""
    while True:
        page = history(stack, job["ID"], limit=2, **({"next_token": token} if token else {}))
        assert len(page["Items"]) <= 2
        seen += [i["SeqNum"] for i in page["Items"]]
        token = page["NextToken"]
        if not token:
            break
    assert seen == [i["SeqNum"] for i in history(stack, job["ID"])["Items"]]
    bad = stack.http.get(f"/api/v1/orchestrator/jobs/{job['ID']}/history", params={"event_type": "some"})
    assert bad.status_code == 400 and "event_type" in bad.json()["Message"]


def test_a_stopped_job_records_why(stack: Gateway) -> None:
    job_id = stack.submit(wasm_job("spin"))
    wait_for(lambda: stack.executions(job_id)[0]["ComputeState"]["StateType"] == "Running", what="the spin to run")
    assert stack.http.delete(f"/api/v1/orchestrator/jobs/{job_id}", params={"reason": "enough"}).status_code == 200
    wait_for(lambda: stack.executions(job_id)[0]["ComputeState"]["StateType"] == "Cancelled",
             what="the execution to be cancelled")
    messages = [(i["Event"]["Message"], i["ExecutionState"] or i["JobState"]) for i in history(stack, job_id)["Items"]]
    assert ("enough", {"Previous": "Running", "New": "Stopped"}) in messages
    why = "Execution stop requested because job has been stopped"
    assert (why, {"Previous": "Running", "New": "Running"}) in messages
    assert (why, {"Previous": "Running", "New": "Cancelled"}) in messages


def test_shoal_job_history(stack: Gateway) -> None:
    job, _ = stack.run(wasm_job("echo", "cli"))
    env = stack.env | {"SHOAL_API_URL": stack.url}
    table = subprocess.run(shoal_command("job", "history", job["ID"][:10]), capture_output=True, text=True,
                           env=env, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "Job submitted" in table.stdout and "Pending → Running" in table.stdout
    assert "Publishing → Completed" in table.stdout
    as_json = subprocess.run(shoal_command("job", "history", job["ID"], "--event-type", "job", "--output", "json"),
                             capture_output=True, text=True, env=env, timeout=60)
    assert [i["Event"]["Message"] for i in json.loads(as_json.stdout)["Items"]] == [
        "Job submitted", "Running", "Job completed"]
