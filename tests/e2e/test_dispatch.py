"""A waiting long-poll is woken by a submission: dispatch never waits for the poll period to run out."""

from __future__ import annotations

import concurrent.futures
import time

import httpx

from tests.conftest import Cluster
from tests.fakes import NODE_INFO
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


def test_idle_polls_that_began_together_end_spread_over_the_last_quarter_of_their_wait(cluster: Cluster) -> None:
    """Agents that start (or come back) together would otherwise all poll again at the same moment."""
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
    assert took[0] >= 3.0 and took[-1] <= 4.5, took  # within the last quarter of Wait (and a little slack)
    assert took[-1] - took[0] > 0.05, took  # not all at once
