"""A gateway on PostgreSQL with `database_calls=threads`, what `auto` picks for a server elsewhere: its jobs run
as on the event loop, and a transaction that waits on a row lock holds up no other request."""

from __future__ import annotations

import concurrent.futures

import httpx
import psycopg
from sqlalchemy import make_url

from tests.conftest import Cluster, postgres_server, wait_for
from tests.specs import wasm_job


def test_with_worker_threads_jobs_run_and_a_transaction_waiting_on_a_lock_holds_up_no_other_request(
        cluster: Cluster) -> None:
    server = postgres_server()
    database = server.create_database()
    gateway = cluster.gateway(database_url=database, database_calls="threads", queue_timeout="600")
    cluster.agent(gateway)
    done, execution = gateway.run(wasm_job("echo", "threads", publisher="noop"))
    assert done["State"]["StateType"] == "Completed"
    assert execution["RunOutput"]["Stdout"].strip() == "threads"

    waiting = wasm_job("echo", "never")
    waiting["Constraints"] = [{"Key": "zone", "Operator": "=", "Values": ["nowhere"]}]  # no node: it stays queued
    job_id = gateway.submit(waiting)
    dsn = server.dsn(make_url(database).database or "")
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as watcher, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        # someone else's transaction (an operator's psql, another replica) holds the job's row
        holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        stopping = pool.submit(httpx.delete, f"{gateway.url}/api/v1/orchestrator/jobs/{job_id}", timeout=60)
        wait_for(lambda: watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND datname = current_database()").fetchone() == (1,),
                 timeout=30, what="the stop's transaction to wait on the row lock")
        listed = gateway.http.get("/api/v1/orchestrator/jobs", timeout=10)  # on the event loop it would wait too
        assert listed.status_code == 200, listed.text
        assert job_id in [job["ID"] for job in listed.json()["Items"]]
        assert not stopping.done(), "the stop went through while the row was locked"
        holder.rollback()
        stopped = stopping.result(timeout=30)
    assert stopped.status_code == 200, stopped.text
    assert gateway.wait_for_job(job_id)["State"]["StateType"] == "Stopped"
