"""A submission that claims for a waiting poll lets the poll answer first: the agent starts on the work while
the submitter's answer is still being written."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx

from gateway.app import create_app
from gateway.services import Services
from gateway.settings import Settings
from tests.gateway.conftest import database_url

WASM = "data:application/wasm;base64," + base64.b64encode(b"\0asm\1\0\0\0").decode()
JOB = {"Type": "batch", "Count": 1, "Tasks": [{
    "Name": "main", "Engine": {"Type": "wasm", "Params": {"EntryModule": "/app/m.wasm"}}, "Publisher": {"Type": "noop"},
    "InputSources": [{"Target": "/app/m.wasm", "Source": {"Type": "inline", "Params": {"URL": WASM}}}]}]}


def test_a_poll_handed_work_by_a_submission_answers_before_the_submission(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, database_url=database_url(tmp_path)))
    svc: Services = app.state.services
    answered: list[str] = []

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            registered = await client.post("/api/v1/compute/register", json={
                "Engines": ["wasm"], "Publishers": ["noop"], "StorageSources": ["inline"],
                "Capacity": {"CPU": 2, "Memory": 2**31}})
            assert registered.status_code == 200, registered.text
            agent = {"Authorization": f"Bearer {registered.json()['Credential']}"}

            async def poll() -> dict[str, Any]:
                response = await client.post("/api/v1/compute/poll", headers=agent,
                                             json={"Slots": 1, "FreeSlots": 1, "Running": [], "Wait": 10})
                answered.append("poll")
                assert response.status_code == 200, response.text
                return dict(response.json())

            async def submit() -> str:
                response = await client.put("/api/v1/orchestrator/jobs", json={"Job": JOB})
                answered.append("submit")
                assert response.status_code == 200, response.text
                return str(response.json()["JobID"])

            polling = asyncio.create_task(poll())
            while not any(waiter._waker for waiter in svc.work._waiters):  # waiting: its first look found nothing
                await asyncio.sleep(0.01)
            job_id = await submit()
            work = await asyncio.wait_for(polling, 10)
            assert [e["JobID"] for e in work["Executions"]] == [job_id]

    asyncio.run(main())
    assert answered == ["poll", "submit"]
