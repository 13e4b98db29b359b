"""Prefect, the peer of bench/dispatch.py: submit → flow start latency and throughput of no-op flow runs.

    bench/peers/setup
    bench/.peers-venv/bin/python bench/peers/prefect_peer.py [--quick] [--workers K] --json PATH

Starts, in a fresh temp dir, its own `prefect server start` on a free loopback port (PREFECT_HOME in the temp dir,
so the default SQLite database; analytics, client tracking and the UI off) and creates two work pools of type
`process` and two deployments of flows from a file it writes there (local source: the flow-run process changes to
that directory and imports the file; no image, no remote storage). Every PREFECT_* variable of the caller is
dropped. Prefect's process worker polls the API for scheduled runs every PREFECT_WORKER_QUERY_SECONDS (10 s by
default) and runs each flow run in a new `python -m prefect.engine` subprocess. Two configurations are measured
in turn, with the same server: Prefect's defaults, and the workers' polling interval turned down to 1 s.

- latency: one worker (`--limit 1`), flow runs one after another, each created with one
  `POST /deployments/{id}/create_flow_run` (the client's `create_flow_run_from_deployment`). The clock is read
  just before that call; the flow's first statement reads it again and writes it to a file named by a parameter.
  latency = flow clock - submit clock. After a run is seen final, the script waits until the worker has no
  flow-run subprocess left (the worker takes no new run before that), then 50 ms.
- throughput: K workers (`--limit 1` each: K flow runs at a time, as K single-slot agents), M no-op flow runs
  created at once from one loop in one thread, R rounds. A round's time runs from just before the first creation
  to the latest `end_time` the API reports for the round's runs.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from common import (
    HOST,
    PACING_S,
    WARMUP_JOBS,
    Counts,
    PeerError,
    Proc,
    Procs,
    free_port,
    latency_result,
    loopback_env,
    parse_args,
    run_peer,
    summary,
    throughput_result,
    throughput_round,
    wait_for,
)

if TYPE_CHECKING:  # Prefect itself is imported once PREFECT_* point at the server: see use_env()
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

# Every flow run costs a new Python interpreter importing Prefect (seconds of CPU), and the default polling
# interval is 10 s: these counts are far lower than Celery's and Shoal's (100 latency jobs, 3 x 500 throughput
# jobs), or a run would take hours. --quick takes 3 to 4 minutes on a 2-core machine.
FULL = Counts(latency_jobs=30, throughput_jobs=40, rounds=3)
QUICK = Counts(latency_jobs=4, throughput_jobs=8, rounds=2)

LATENCY_POOL = "peer-latency"
THROUGHPUT_POOL = "peer-throughput"
FLOWS_FILE = "peer_flows.py"
FLOWS_SOURCE = '''"""Flows of bench/peers/prefect_peer.py."""

import time
from pathlib import Path

from prefect import flow


@flow
def latency_flow(out: str) -> None:
    """The latency flow: writes the clock at its first statement to `out`."""
    started = time.time_ns()
    Path(out).write_text(str(started))


@flow
def noop_flow() -> None:
    """The throughput flow: does nothing."""
'''

# The server's settings, the same in both configurations: nothing leaves the machine, no dashboard is served.
SERVER_SETTINGS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                   "PREFECT_SERVER_UI_ENABLED": "false"}


@dataclass(frozen=True)
class Configuration:
    """Settings given to the workers (and so to their flow-run subprocesses) as environment variables."""

    name: str
    worker_env: dict[str, str]
    why: str


CONFIGURATIONS = (
    Configuration("default", {}, "Prefect's defaults"),
    Configuration("poll 1 s", {"PREFECT_WORKER_QUERY_SECONDS": "1"},
                  "workers poll for scheduled runs every 1 s instead of 10 s. PREFECT_WORKER_PREFETCH_SECONDS is "
                  "left alone: it only lets a worker take runs scheduled up to that far in the future, and these "
                  "runs are scheduled for the moment they are created"),
)
POLL_S = 0.1  # how often the script asks the API whether a latency run is final
RUN_TIMEOUT_S = 120.0  # for one latency flow run
ROUND_TIMEOUT_BASE_S, ROUND_TIMEOUT_PER_JOB_S = 300.0, 10.0
STARTED = time.monotonic()


def progress(message: str) -> None:
    """A line on stderr, with the seconds since the script started."""
    print(f"prefect: {time.monotonic() - STARTED:6.1f} s  {message}", file=sys.stderr)


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """The environment of every Prefect process, this one's included: the caller's without PREFECT_*, with
    PREFECT_HOME in the temp dir, the server's API URL and SERVER_SETTINGS."""
    env = {k: v for k, v in loopback_env().items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(home), "PREFECT_API_URL": api_url} | SERVER_SETTINGS


def use_env(env: dict[str, str]) -> None:
    """Makes `env` this process's environment, before Prefect is imported (its settings come from there)."""
    os.environ.clear()
    os.environ.update(env)


def start_server(procs: Procs, port: int) -> Proc:
    """`prefect server start` on `port`; returns once `/api/health` answers."""
    import httpx

    prefect = str(Path(sys.executable).parent / "prefect")
    proc = procs.spawn("prefect-server", [prefect, "server", "start", "--host", HOST, "--port", str(port)])

    def healthy() -> bool:
        proc.check()
        try:
            return httpx.get(f"http://{HOST}:{port}/api/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=180, interval=0.2, what="the Prefect server to answer /api/health")
    return proc


def deploy(client: SyncPrefectClient, root: Path) -> dict[str, UUID]:
    """The two process work pools and a deployment of each flow of FLOWS_SOURCE from the local directory `root`.
    Returns the deployments' ids by use."""
    from prefect import Flow, flow
    from prefect.client.schemas.actions import WorkPoolCreate

    (root / "flows").mkdir()
    (root / "flows" / FLOWS_FILE).write_text(FLOWS_SOURCE)
    ids = {}
    with open(root / "deploy.log", "w") as log, redirect_stdout(log):  # .deploy() prints a table
        for use, pool, entrypoint in (("latency", LATENCY_POOL, "latency_flow"),
                                      ("throughput", THROUGHPUT_POOL, "noop_flow")):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            source = flow.from_source(source=str(root / "flows"), entrypoint=f"{FLOWS_FILE}:{entrypoint}")
            if not isinstance(source, Flow):  # from_source() returns a coroutine only in async code
                raise PeerError(f"flow.from_source returned {source!r}")
            deployment = source.deploy(name=use, work_pool_name=pool, build=False, push=False,
                                       print_next_steps=False, ignore_warnings=True)
            if not isinstance(deployment, UUID):
                raise PeerError(f"Flow.deploy returned {deployment!r}")
            ids[use] = deployment
    return ids


def start_workers(procs: Procs, client: SyncPrefectClient, pool: str, names: list[str],
                  env: dict[str, str]) -> list[Proc]:
    """One `prefect worker start --type process --limit 1` per name on `pool`; returns once the API lists
    them all ONLINE."""
    prefect = str(Path(sys.executable).parent / "prefect")
    started = [procs.spawn(f"worker-{name}", [prefect, "worker", "start", "--pool", pool, "--type", "process",
                                              "--limit", "1", "--name", name], env)
               for name in names]

    def online() -> bool:
        for proc in started:
            proc.check()
        workers = client.read_workers_for_work_pool(pool)
        return {w.name for w in workers if str(w.status.value) == "ONLINE"} >= set(names)

    wait_for(online, timeout=180, interval=0.2, what=f"{len(names)} Prefect worker(s) online on {pool}")
    return started


def children(pid: int) -> list[int]:
    """The child processes of `pid`, whichever of its threads started them (/proc/PID/task/TID/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return found


def wait_final(client: SyncPrefectClient, run_id: UUID, timeout: float) -> FlowRun:
    """The flow run, once its state is final."""
    def final() -> FlowRun | None:
        run = client.read_flow_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    return wait_for(final, timeout=timeout, interval=POLL_S, what=f"flow run {run_id} to finish")


def state_of(run: FlowRun) -> str:
    """The type of the run's state: COMPLETED, FAILED, CRASHED, ..."""
    return str(run.state.type.value) if run.state is not None else "NO STATE"


def describe(run: FlowRun) -> str:
    return f"{run.id} ended {state_of(run)}: {run.state.message if run.state is not None else ''}"


def state_time(client: SyncPrefectClient, run_id: UUID, state_type: str) -> datetime | None:
    """When the flow run first entered `state_type` (PENDING: a worker took it), from its state history."""
    times = [s.timestamp for s in client.read_flow_run_states(run_id) if str(s.type.value) == state_type]
    return min(times) if times else None


def one_latency_job(client: SyncPrefectClient, worker: Proc, deployment: UUID, out: Path) -> dict[str, float]:
    """A latency flow run created once the worker is idle; submit → flow start, with a breakdown."""
    wait_for(lambda: not children(worker.popen.pid), timeout=RUN_TIMEOUT_S, interval=0.01,
             what="the worker's flow-run subprocess to exit")
    time.sleep(PACING_S)
    submitted = time.time_ns()
    run = client.create_flow_run_from_deployment(deployment, parameters={"out": str(out)})
    created = time.time_ns()
    run = wait_final(client, run.id, RUN_TIMEOUT_S)
    if state_of(run) != "COMPLETED" or not out.exists():
        raise PeerError(f"latency flow run {describe(run)}")
    started = int(out.read_text())
    pending = state_time(client, run.id, "PENDING")
    if pending is None:
        raise PeerError(f"latency flow run {run.id} has no PENDING state in its history")
    taken = pending.timestamp() * 1e9
    return {"submit_to_start_ms": (started - submitted) / 1e6, "create_call_ms": (created - submitted) / 1e6,
            "submit_to_pending_ms": (taken - submitted) / 1e6, "pending_to_start_ms": (started - taken) / 1e6}


def measure_latency(client: SyncPrefectClient, worker: Proc, deployment: UUID, root: Path, jobs: int) -> dict[str, Any]:
    """WARMUP_JOBS then `jobs` latency flow runs, one after another."""
    runs = [one_latency_job(client, worker, deployment, root / f"started-{index}")
            for index in range(WARMUP_JOBS + jobs)][WARMUP_JOBS:]
    breakdown = {key: summary([r[key] for r in runs]) for key in runs[0] if key != "submit_to_start_ms"}
    return latency_result([r["submit_to_start_ms"] for r in runs], WARMUP_JOBS, workers=1, worker_limit=1,
                          pacing="after the run is final and the worker's flow-run subprocess has exited, "
                                 f"{PACING_S * 1000:g} ms",
                          breakdown_ms=breakdown, runs=runs)


def read_runs(client: SyncPrefectClient, ids: list[UUID]) -> Iterator[FlowRun]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    for start in range(0, len(ids), 200):
        chunk = ids[start:start + 200]
        yield from client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                         limit=len(chunk))


def throughput_once(client: SyncPrefectClient, deployment: UUID, jobs: int) -> dict[str, Any]:
    """One round: `jobs` no-op flow runs created in a loop, then waited for until every one is final."""
    first = time.time_ns()
    ids = [client.create_flow_run_from_deployment(deployment).id for _ in range(jobs)]
    submitted = time.time_ns()
    final: list[FlowRun] = []

    def all_final() -> bool:
        final[:] = [run for run in read_runs(client, ids) if run.state is not None and run.state.is_final()]
        return len(final) == jobs

    timeout = ROUND_TIMEOUT_BASE_S + ROUND_TIMEOUT_PER_JOB_S * jobs
    try:
        wait_for(all_final, timeout=timeout, interval=0.5, what=f"{jobs} flow runs to finish")
    except PeerError as error:
        print(f"prefect: {error}", file=sys.stderr)
    completed = [run for run in final if state_of(run) == "COMPLETED"]
    errors = [describe(run)[:300] for run in final if state_of(run) != "COMPLETED"]
    errors += [f"{len(ids) - len(final)} run(s) not final after {timeout:g}s"] if len(final) < len(ids) else []
    ends = [run.end_time.timestamp() for run in completed if run.end_time is not None]
    elapsed = max(ends) - first / 1e9 if ends else 0.0
    return throughput_round(jobs, len(completed), jobs - len(completed), elapsed,
                            submit_s=(submitted - first) / 1e9, errors=errors[:20])


def settings_of(config: Configuration) -> dict[str, Any]:
    """The worker settings in force in `config`: Prefect's defaults (from its settings model) and the changes."""
    from prefect.settings.models.worker import WorkerSettings

    defaults = {f"PREFECT_WORKER_{name.upper()}": field.default for name, field in WorkerSettings.model_fields.items()
                if name in ("query_seconds", "prefetch_seconds", "heartbeat_seconds")}
    return {"changed": dict(config.worker_env), "why": config.why,
            "worker_settings": defaults | {k: float(v) for k, v in config.worker_env.items()},
            "worker_command": "prefect worker start --pool <pool> --type process --limit 1 --name <name>",
            "server_command": f"prefect server start --host {HOST} --port <free port>",
            "server_settings": SERVER_SETTINGS}


def measure_configuration(config: Configuration, args: argparse.Namespace, client: SyncPrefectClient,
                          procs: Procs, root: Path, deployments: dict[str, UUID]) -> dict[str, Any]:
    """Latency with one worker, then the throughput rounds with K workers, all started with `config`."""
    tag = config.name.replace(" ", "-")
    (workdir := root / f"latency-{tag}").mkdir()
    [worker] = start_workers(procs, client, LATENCY_POOL, [f"{tag}-latency"], config.worker_env)
    progress(f"{config.name}: latency worker online")
    latency = measure_latency(client, worker, deployments["latency"], workdir, args.latency_jobs)
    progress(f"{config.name}: latency p50 {latency['submit_to_start_ms']['p50']:.0f} ms")
    procs.stop(worker)
    workers = start_workers(procs, client, THROUGHPUT_POOL, [f"{tag}-{i}" for i in range(args.workers)],
                            config.worker_env)
    progress(f"{config.name}: {args.workers} throughput workers online")
    rounds = []
    for index in range(args.rounds):
        rounds.append(throughput_once(client, deployments["throughput"], args.throughput_jobs))
        progress(f"{config.name}: round {index + 1}: {rounds[-1]['completed']}/{args.throughput_jobs} in "
                 f"{rounds[-1]['elapsed_s']:.1f} s")
    for worker in workers:
        procs.stop(worker)
    progress(f"{config.name}: workers stopped")
    throughput = throughput_result(args.throughput_jobs, args.workers, rounds, worker_processes=args.workers,
                                   worker_limit=1, submitted_from="one loop, one thread",
                                   elapsed="first creation to the latest end_time of the round's flow runs")
    return {"name": config.name, "settings": settings_of(config), "latency": latency, "throughput": throughput}


def versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "prefect": metadata.version("prefect"), "sqlite": sqlite3.sqlite_version}


def run(args: argparse.Namespace, root: Path, procs: Procs, port: int) -> list[dict[str, Any]]:
    """The server, the deployments, then each configuration in turn."""
    from prefect.client.orchestration import get_client

    start_server(procs, port)
    progress("server up")
    with get_client(sync_client=True) as client:
        deployments = deploy(client, root)
        progress("deployed")
        configurations = []
        for config in CONFIGURATIONS:
            configurations.append(measure_configuration(config, args, client, procs, root, deployments))
    if not (root / "home" / "prefect.db").exists():
        raise PeerError("the server's SQLite database is not at PREFECT_HOME/prefect.db")
    return configurations


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Prefect", FULL, QUICK, argv)
    root = Path(tempfile.mkdtemp(prefix="shoal-peer-prefect-"))
    port = free_port()
    env = prefect_env(root / "home", f"http://{HOST}:{port}/api")
    use_env(env)
    parameters = {"database": "SQLite, the default (PREFECT_HOME/prefect.db)", "work_pool_type": "process",
                  "flow_source": "local directory (flow.from_source + .deploy)",
                  "submit": "SyncPrefectClient.create_flow_run_from_deployment"}
    procs = Procs(root, env)
    return run_peer("prefect", args, procs, STARTED, lambda: run(args, root, procs, port), versions, parameters)


if __name__ == "__main__":
    sys.exit(main())
