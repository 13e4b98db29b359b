"""Several stateless gateway replicas on one PostgreSQL and one S3 store (moto's server): any replica answers
any request, work submitted to one reaches agents waiting on another at once, a replica killed mid-run loses
nothing acknowledged, and so does a PostgreSQL restart."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import S3, Cluster, Gateway, wait_for
from tests.postgres import PostgresServer
from tests.specs import wasm_job

pytestmark = [pytest.mark.usefixtures("aws_env"), pytest.mark.timeout(900)]

TERMINAL = ("Completed", "Failed", "Stopped")


def replicas(cluster: Cluster, own_postgres: PostgresServer, s3: S3, count: int, **settings: str) -> list[Gateway]:
    database = own_postgres.create_database()
    shared = {"database_url": database, "results_bucket": s3.bucket, "s3_endpoint_url": s3.endpoint,
              "s3_region": "us-east-1", "poll_seconds": "5", "lease_seconds": "15", **settings}
    return [cluster.gateway(**shared) for _ in range(count)]


def tiny_job(index: int) -> dict[str, Any]:
    job = wasm_job("echo", f"job {index}", publisher="noop")
    job["Labels"] = {"run": "replicas"}
    return job


def submit_all(gateways: list[Gateway], jobs: list[dict[str, Any]]) -> list[str]:
    """Every job through one of the replicas, in turn, from several threads; returns the acknowledged IDs."""
    def submit(index: int) -> str | None:
        gateway = gateways[index % len(gateways)]
        try:
            response = httpx.put(f"{gateway.url}/api/v1/orchestrator/jobs", json={"Job": jobs[index]}, timeout=60)
        except httpx.TransportError:
            return None  # not acknowledged: the replica died before answering
        return str(response.json()["JobID"]) if response.status_code == 200 else None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return [job_id for job_id in pool.map(submit, range(len(jobs))) if job_id]


def states(gateway: Gateway) -> dict[str, str]:
    found: dict[str, str] = {}
    token = ""
    while True:
        params = {"labels": "run=replicas", "limit": 1000, **({"next_token": token} if token else {})}
        page = gateway.http.get("/api/v1/orchestrator/jobs", params=params).json()
        found |= {job["ID"]: job["State"]["StateType"] for job in page["Items"]}
        token = page["NextToken"]
        if not token:
            return found


def wait_all_done(gateway: Gateway, job_ids: list[str], timeout: float) -> dict[str, str]:
    def done() -> dict[str, str] | None:
        seen = states(gateway)
        return seen if all(seen.get(j) in TERMINAL for j in job_ids) else None

    return dict(wait_for(done, timeout=timeout, interval=1.0, what=f"{len(job_ids)} jobs to finish"))


def assert_each_ran_once(gateway: Gateway, job_ids: list[str]) -> None:
    """Every job Completed, with exactly one completed execution, on one node."""
    seen = states(gateway)
    assert Counter(seen[j] for j in job_ids) == Counter({"Completed": len(job_ids)})
    for job_id in job_ids:
        executions = gateway.executions(job_id)
        completed = [e for e in executions if e["ComputeState"]["StateType"] == "Completed"]
        assert len(completed) == 1, (job_id, [(e["ComputeState"], e["NodeID"], e["ModifyTime"]) for e in executions])
        assert completed[0]["NodeID"], completed[0]


def test_three_replicas_share_the_work_and_each_job_runs_once(cluster: Cluster, own_postgres: PostgresServer,
                                                             s3: S3) -> None:
    gateways = replicas(cluster, own_postgres, s3, 3)
    for index in range(8):  # agents spread over the replicas, each able to fail over to the others
        cluster.agent(gateways[index % 3], "--max-executions", "4", replicas=gateways)
    job_ids = submit_all(gateways, [tiny_job(i) for i in range(2000)])
    assert len(job_ids) == 2000
    wait_all_done(gateways[1], job_ids, timeout=600)
    assert_each_ran_once(gateways[2], job_ids[::7])  # a sample, read through another replica
    assert Counter(states(gateways[0]).values()) == Counter({"Completed": 2000})
    nodes = {e["NodeID"] for j in job_ids[:200] for e in gateways[0].executions(j)}
    assert len(nodes) >= 4  # the work was spread


def test_work_submitted_to_one_replica_wakes_an_agent_waiting_on_another(cluster: Cluster, own_postgres: PostgresServer,
                                                                         s3: S3) -> None:
    """The agent's poll on replica A waits up to 30 s; without a notification from replica B it would only
    see the job when that poll ends. It starts long before."""
    a, b = replicas(cluster, own_postgres, s3, 2, poll_seconds="30", lease_seconds="90")
    cluster.agent(a)
    waits = []
    for index in range(5):
        time.sleep(0.5)  # let the agent's poll be waiting on replica A (pacing only; the outcome is below)
        started = time.monotonic()
        job_id = b.submit(tiny_job(index))
        b.wait_for_job(job_id, timeout=30)
        waits.append(time.monotonic() - started)
    assert max(waits) < 10, waits  # a third of the poll period: the notification, not the poll's end


def test_logs_and_results_are_served_by_any_replica(cluster: Cluster, own_postgres: PostgresServer, s3: S3,
                                                     tmp_path: Path) -> None:
    a, b = replicas(cluster, own_postgres, s3, 2)
    cluster.agent(a)
    job = wasm_job("echo", "from replica a")
    job_id = a.submit(job)
    with httpx.stream("GET", f"{b.url}/api/v1/orchestrator/jobs/{job_id}/logs",
                      params={"follow": "true", "format": "ndjson"}, timeout=httpx.Timeout(30, read=60)) as followed:
        assert followed.status_code == 200
        lines = [json.loads(line)["Line"] for line in followed.iter_lines() if line]
    assert lines == ["from replica a"]
    b.wait_for_job(job_id)
    out = b.download(job_id, tmp_path / "out")  # presigned by replica b, fetched from the shared S3 store
    assert (out / "stdout").read_text() == "from replica a\n"


def test_a_replica_killed_mid_run_loses_nothing_acknowledged(cluster: Cluster, own_postgres: PostgresServer,
                                                             s3: S3) -> None:
    gateways = replicas(cluster, own_postgres, s3, 3)
    for index in range(4):
        cluster.agent(gateways[index % 3], "--max-executions", "4", replicas=gateways)
    jobs = [tiny_job(i) for i in range(600)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        submitting = pool.submit(submit_all, gateways, jobs)
        wait_for(lambda: len(states(gateways[1])) >= 100, timeout=120, interval=0.2, what="a run under way")
        gateways[0].process.kill()
        acknowledged = submitting.result(timeout=300)
    assert len(acknowledged) >= 300
    survivors = gateways[1:]
    more = submit_all(survivors, [tiny_job(1000 + i) for i in range(100)])
    wait_all_done(survivors[0], acknowledged + more, timeout=600)
    assert_each_ran_once(survivors[1], acknowledged[::5] + more)


def test_a_postgres_restart_loses_nothing_acknowledged(cluster: Cluster, own_postgres: PostgresServer, s3: S3) -> None:
    gateways = replicas(cluster, own_postgres, s3, 2)
    for index in range(2):
        cluster.agent(gateways[index], "--max-executions", "4", replicas=gateways)
    before = submit_all(gateways, [tiny_job(i) for i in range(100)])
    own_postgres.stop("fast")
    own_postgres.start()
    after = submit_all(gateways, [tiny_job(100 + i) for i in range(100)])
    assert len(before) == 100 and len(after) >= 95
    wait_all_done(gateways[0], before + after, timeout=300)
    assert_each_ran_once(gateways[1], before + after)
