"""A waiting long-poll is woken by a submission: dispatch never waits for the poll period to run out."""

from __future__ import annotations

import time

from tests.conftest import Cluster
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
