"""Celery with Redis, the peer of bench/dispatch.py: submit → task start latency and throughput of no-op tasks.

    bench/peers/setup
    bench/.peers-venv/bin/python bench/peers/celery_peer.py [--quick] [--workers K] --json PATH

Starts, in a fresh temp dir, its own `redis-server` on a free loopback port (no snapshots, no append-only file:
not durable, unlike Shoal's SQL store) as broker and result backend, and one `celery worker` (prefork pool,
`--concurrency K`, Celery's defaults otherwise) running a task module the script writes there. Stops them
whatever happens. What is measured:

- latency: jobs one after another; the clock is read just before `apply_async`, the task's first statement
  reads it again and returns it; latency = task clock - submit clock. 50 ms pass after each result arrived.
- throughput: M no-op tasks submitted at once from one loop in one thread, R rounds on the same servers. A
  round's time runs from just before the first submission to the latest end clock the tasks return (the moment
  the last task finished, just before its result is stored); the time until the client had received every
  result is reported beside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from common import (
    HOST,
    PACING_S,
    WARMUP_JOBS,
    Counts,
    PeerError,
    Procs,
    free_port,
    latency_result,
    loopback_env,
    parse_args,
    run_peer,
    throughput_result,
    throughput_round,
    wait_for,
)

FULL = Counts(latency_jobs=100, throughput_jobs=500, rounds=3)
QUICK = Counts(latency_jobs=20, throughput_jobs=100, rounds=2)
URL_VARIABLE = "PEER_REDIS_URL"
TASKS_MODULE = "peer_tasks"
RESULT_TIMEOUT_S = 60.0  # for one latency job
ROUND_TIMEOUT_S = 600.0  # for every result of a throughput round
REDIS_ARGS = ("--save", "", "--appendonly", "no")  # no persistence at all
REDIS_REPORTED = ("save", "appendonly", "appendfsync", "io-threads", "maxmemory", "hz")

# Written into the temp dir, imported by the worker and by this script. Redis is broker and result backend;
# everything else is Celery's default.
TASKS_SOURCE = f'''"""Tasks of bench/peers/celery_peer.py."""

import os
import time

from celery import Celery

app = Celery("peer", broker=os.environ["{URL_VARIABLE}"], backend=os.environ["{URL_VARIABLE}"])


@app.task
def started_at() -> int:
    """The latency task: the clock at its first statement."""
    return time.time_ns()


@app.task
def noop() -> int:
    """The throughput task: does nothing and returns the clock at its end."""
    return time.time_ns()
'''

# Celery settings that shape the figures, all left at Celery's defaults, read back from the app.
REPORTED_CONF = ("worker_prefetch_multiplier", "worker_disable_prefetch", "task_acks_late", "task_serializer",
                 "result_serializer", "result_expires", "broker_pool_limit", "task_track_started",
                 "task_ignore_result", "broker_transport_options", "result_backend_transport_options",
                 "worker_max_tasks_per_child")


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    return next((part[2:] for part in out.split() if part.startswith("v=")), out.strip())


def versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "celery": metadata.version("celery"),
            "kombu": metadata.version("kombu"), "billiard": metadata.version("billiard"),
            "redis-py": metadata.version("redis"), "redis-server": redis_version()}


def start_redis(procs: Procs) -> tuple[str, dict[str, Any]]:
    """redis-server on a free loopback port with its files in the temp dir; once it answers PING, its URL and the
    settings REDIS_REPORTED that it runs with."""
    import redis

    port = free_port()
    proc = procs.spawn("redis", ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(procs.root),
                                 *REDIS_ARGS])
    client = redis.Redis(host=HOST, port=port)

    def answers() -> bool:
        proc.check()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, timeout=30, what="redis-server to answer PING")
    config = {key: client.config_get(key).get(key) for key in REDIS_REPORTED}
    client.close()
    return f"redis://{HOST}:{port}/0", config


def start_worker(procs: Procs, tasks: ModuleType, url: str, workers: int) -> dict[str, Any]:
    """One `celery worker` process group, prefork pool with `workers` children; its stats once it answers."""
    celery = str(Path(sys.executable).parent / "celery")
    proc = procs.spawn("celery-worker", [celery, "-A", TASKS_MODULE, "worker", "--pool", "prefork",
                                         "--concurrency", str(workers), "--loglevel", "INFO",
                                         "--hostname", "peer@%h"],
                       {"PYTHONPATH": str(procs.root), URL_VARIABLE: url})

    def answers() -> list[dict[str, Any]]:
        proc.check()
        return list(tasks.app.control.ping(timeout=0.5))

    wait_for(answers, timeout=60, interval=0.2, what="the celery worker to answer ping")
    stats = tasks.app.control.inspect(timeout=2).stats() or {}
    if not stats:
        raise PeerError("the celery worker did not answer `inspect stats`")
    return next(iter(stats.values()))


def measure_latency(tasks: ModuleType, jobs: int) -> dict[str, Any]:
    """`jobs` latency tasks after WARMUP_JOBS, one after another, each after a 50 ms pause."""
    latencies: list[float] = []
    for index in range(WARMUP_JOBS + jobs):
        time.sleep(PACING_S)
        submitted = time.time_ns()
        result = tasks.started_at.apply_async()
        try:
            started = int(result.get(timeout=RESULT_TIMEOUT_S))
        except CeleryTimeout as error:
            raise PeerError(f"latency task {result.id}: no result within {RESULT_TIMEOUT_S:g}s") from error
        if index >= WARMUP_JOBS:
            latencies.append((started - submitted) / 1e6)
    return latency_result(latencies, WARMUP_JOBS, pacing_s=PACING_S, result_wait="AsyncResult.get (Redis pub/sub)")


def throughput_once(tasks: ModuleType, jobs: int) -> dict[str, Any]:
    """One round: `jobs` no-op tasks submitted in a loop, then every result collected (up to ROUND_TIMEOUT_S)."""
    first = time.time_ns()
    results = [tasks.noop.apply_async() for _ in range(jobs)]
    submitted = time.time_ns()
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    ends: list[int] = []
    errors: list[str] = []
    for result in results:
        try:
            value = result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
        except CeleryTimeout:
            errors.append(f"{result.id}: no result within {ROUND_TIMEOUT_S:g}s of the round")
            continue
        if result.successful():
            ends.append(int(value))
        else:
            errors.append(f"{result.id}: {result.state} {value!r}"[:300])
    received = time.time_ns()
    elapsed = (max(ends) - first) / 1e9 if ends else 0.0
    return throughput_round(jobs, len(ends), jobs - len(ends), elapsed, submit_s=(submitted - first) / 1e9,
                            elapsed_to_all_results_received_s=(received - first) / 1e9, errors=errors[:20])


def measure(args: argparse.Namespace, root: Path, procs: Procs) -> dict[str, Any]:
    """Starts Redis and the worker, runs the latency jobs then the throughput rounds; the configuration."""
    url, redis_config = start_redis(procs)
    os.environ[URL_VARIABLE] = url
    (root / f"{TASKS_MODULE}.py").write_text(TASKS_SOURCE)
    sys.path.insert(0, str(root))
    import peer_tasks as tasks

    stats = start_worker(procs, tasks, url, args.workers)
    settings = {
        "broker": "redis", "result_backend": "redis", "redis_url": url,
        "redis_server_args": ["--bind", HOST, "--dir", "<temp dir>", *REDIS_ARGS],
        "durable": False, "durability_note": "redis-server with --save '' --appendonly no keeps queued tasks and "
                                             "results in memory only",
        "redis_config": redis_config,
        "worker": {"process_groups": 1, "pool": "prefork", "concurrency": args.workers,
                   "options": "none but --pool, --concurrency, --loglevel INFO, --hostname (no -O, no prefetch flag)",
                   "prefetch_count": stats.get("prefetch_count"), "pool_stats": stats.get("pool")},
        "celery_conf": {key: repr_safe(tasks.app.conf[key]) for key in REPORTED_CONF},
    }
    latency = measure_latency(tasks, args.latency_jobs)
    rounds = []
    for index in range(args.rounds):
        rounds.append(throughput_once(tasks, args.throughput_jobs))
        print(f"celery: round {index + 1}: {rounds[-1]['completed']}/{args.throughput_jobs} in "
              f"{rounds[-1]['elapsed_s']:.2f} s", file=sys.stderr)
    throughput = throughput_result(args.throughput_jobs, args.workers, rounds, submitted_from="one loop, one thread",
                                   elapsed="first submission to the latest end clock returned by a task")
    return {"name": "default", "settings": settings, "latency": latency, "throughput": throughput}


def repr_safe(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None) | dict | list) else repr(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Celery with Redis", FULL, QUICK, argv)
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="shoal-peer-celery-"))
    procs = Procs(root, loopback_env())
    return run_peer("celery", args, procs, began, lambda: [measure(args, root, procs)], versions, {})


if __name__ == "__main__":
    sys.exit(main())
