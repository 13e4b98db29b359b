"""Dispatch benchmark: submit → task start latency, and end-to-end throughput of tiny WASM jobs, on SQLite and
on PostgreSQL with one or several gateway replicas.

    .venv/bin/python bench/dispatch.py [--quick] [--backends sqlite,postgres] [--replicas 1,3] [--json PATH]

Starts its own `shoal serve` and `shoal agent` processes on 127.0.0.1 (free ports, fresh temp data dirs: fresh
gateways for every measurement) and, for PostgreSQL, its own throwaway PostgreSQL 15 server from
/usr/lib/postgresql/15/bin in a temp dir under /tmp (a fresh database for every measurement); prints a markdown
table and writes JSON (default bench/results/dispatch.json). Every SHOAL_* variable of the caller is dropped, so
that nothing points the processes anywhere but loopback and the backend is the one named. The scenarios'
latency jobs take turns and their throughput runs come in rounds of alternating order, so that drifts in the
machine's speed reach every scenario alike. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import wasmtime
from harness import (
    BUSY_ROOTS,
    JOBS,
    RESULTS,
    ROOT,
    TERMINAL,
    BenchError,
    CpuWatch,
    Postgres,
    Stack,
    csv_subset,
    http_client,
    machine,
    stack,
    summary,
    wait_for,
    write_json,
)

TICK = ROOT / "tests" / "fixtures" / "wasm" / "tick.wat"  # assembled once: see probe_job()
BACKENDS = ("sqlite", "postgres")
PUBLISHER = "noop"  # for every backend: see probe_job()

LATENCY_POLL_S = 0.01  # how often the latency loop asks whether its job finished
FIRST_LOOK_S = 0.03  # and when it first asks: not while the job it measures is being dispatched
PACING_S = 0.05  # pause after a job completes so the agent is back in a waiting long-poll
WARMUP_JOBS = 2  # latency jobs per replica run first and left out of the statistics (compile, first imports)
THREADS = 16
SLOTS_PER_AGENT = 2
QUEUE_PER_AGENT = 1  # executions an agent takes ahead of its free slots (`shoal agent --queue`)
BATCH = 100  # jobs per request in the batched throughput measurement
THROUGHPUT_RUNS = ((1, 1), (4, 1), (4, BATCH))  # (agents, jobs per submission)
DONE_POLL_S = 0.05
NA = "n/a"  # a table cell that does not apply


def probe_job(namespace: str, *args: str) -> dict[str, Any]:
    """A tiny WASM job: tests/fixtures/wasm/tick.wat (897 bytes assembled) sent inline, a spec of about 1.4 KB,
    where the tests' probe.wasm (56 KB of C and wasi-libc) made every spec 75 KB. The `noop` publisher, on every
    backend: the gateway's local object store is per replica (sharing results between replicas needs S3), and
    rows that publish on one backend but not on the other would not compare like with like."""
    url = "data:application/octet-stream;base64," + base64.b64encode(_tick()).decode()
    return {
        "Type": "batch",
        "Namespace": namespace,
        "Count": 1,
        "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "wasm", "Params": {"EntryModule": "/app/tick.wasm", "Parameters": list(args)}},
            "Publisher": {"Type": PUBLISHER},
            "InputSources": [{"Target": "/app/tick.wasm", "Source": {"Type": "inline", "Params": {"URL": url}}}],
        }],
    }


@functools.cache
def _tick() -> bytes:
    return bytes(wasmtime.wat2wasm(TICK.read_text()))


@dataclass(frozen=True)
class Scenario:
    """One row of the table: a backend and a number of gateway replicas."""

    backend: str
    replicas: int
    new_database: Callable[[], str]  # a fresh, empty database's URL for each measurement ("" = SQLite)

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.replicas}"


# -- a. dispatch latency ------------------------------------------------------------------------------------


def one_latency_job(gw: Stack, namespace: str, replica: int = 0) -> dict[str, Any]:
    """A `tick now` job submitted through `replica` (and followed there) to the idle agent."""
    client = gw.clients[replica]
    job = probe_job(namespace, "now")
    time.sleep(PACING_S)
    submitted = time.time_ns()
    job_id = gw.submit(client, job)
    accepted = time.time_ns()

    def finished() -> dict[str, Any] | None:
        response = client.get(f"{JOBS}/{job_id}", params={"include": "executions", "namespace": namespace})
        if response.status_code != 200:
            raise BenchError(f"GET job {job_id} answered {response.status_code}: {response.text[:500]}")
        body = response.json()
        return body if body["Job"]["State"]["StateType"] in TERMINAL else None

    time.sleep(FIRST_LOOK_S)
    body = wait_for(finished, timeout=60, interval=LATENCY_POLL_S, what=f"job {job_id}")
    observed = time.time_ns()
    state = body["Job"]["State"]["StateType"]
    executions = body["Executions"]["Items"]
    output = (executions[-1].get("RunOutput") or {}) if executions else {}
    if state != "Completed" or output.get("ExitCode") != 0:
        raise BenchError(f"latency job {job_id} ended {state}: {json.dumps(executions)[:1000]}")
    started = int(str(output["Stdout"]).strip())
    return {
        "job_id": job_id,
        "replica": replica,
        "submit_to_start_ms": (started - submitted) / 1e6,
        "put_ms": (accepted - submitted) / 1e6,
        "put_returned_to_start_ms": (started - accepted) / 1e6,
        "start_to_completed_ms": (body["Job"]["ModifyTime"] - started) / 1e6,
        "submit_to_observed_done_ms": (observed - submitted) / 1e6,
    }


def latency_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [r["submit_to_start_ms"] for r in runs]
    parts = {key: summary([r[key] for r in runs]) for key in runs[0] if key.endswith("_ms")}
    return {"submit_to_start_ms": summary(latencies), "latencies_ms": latencies, "breakdown_ms": parts}


@dataclass
class LatencyProbe:
    """One scenario's latency stack: one agent, `--max-executions 1`, polling replica 0."""

    scenario: Scenario
    gw: Stack
    namespace: str = field(default_factory=lambda: f"bench-latency-{uuid.uuid4().hex[:8]}")
    warmup: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    cross_runs: list[dict[str, Any]] = field(default_factory=list)

    def step(self, index: int, cross: bool) -> None:
        """The dispatch figures: jobs submitted through the replicas in turn. The cross-replica figures (several
        replicas only): jobs submitted only through the other replicas (1, 2, 1, 2, ...) while the agent waits
        on replica 0."""
        n = self.gw.replicas
        if cross:
            self.cross_runs.append(one_latency_job(self.gw, self.namespace, 1 + index % (n - 1)))
        else:
            self.runs.append(one_latency_job(self.gw, self.namespace, index % n))

    def results(self, cpu: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        n = self.gw.replicas
        latency = {"jobs": len(self.runs), "warmup_jobs": len(self.warmup), "agents": 1, "max_executions": 1,
                   "poll_interval_s": LATENCY_POLL_S, "pacing_s": PACING_S, "namespace": self.namespace,
                   "interleaved": True, "cpu": cpu}
        if n > 1:
            same = [r["submit_to_start_ms"] for r in self.runs if r["replica"] == 0]
            other = [r["submit_to_start_ms"] for r in self.runs if r["replica"] != 0]
            latency |= {"replicas": n, "agent_polls_replica": 0, "submitted_through": "replicas in turn",
                        "submit_to_start_ms_by_case": {"same_replica": summary(same),
                                                       "other_replica": summary(other)}}
        latency |= latency_figures(self.runs) | {"runs": self.runs, "warmup": self.warmup}
        cross = None
        if self.cross_runs:
            cross = {"jobs": len(self.cross_runs), "agent_polls_replica": 0, "submitted_through": list(range(1, n)),
                     "namespace": self.namespace, "interleaved": True, "cpu": cpu}
            cross |= latency_figures(self.cross_runs) | {"runs": self.cross_runs}
        return latency, cross


def bench_latency(root: Path, scenarios: list[Scenario], jobs: int) -> dict[str, tuple[dict[str, Any],
                                                                                       dict[str, Any] | None]]:
    """Every scenario's latency stack runs at once (an idle stack costs next to nothing), and their jobs take
    turns: job i of every scenario (and cross-replica job i of those with several replicas), in an order that
    rotates every round, then job i + 1... So drifts in the machine's speed reach every scenario alike."""
    with ExitStack() as running:
        probes = []
        for scenario in scenarios:
            gw = running.enter_context(stack(root, f"{scenario.label}-latency", scenario.new_database(),
                                             scenario.replicas, agents=1, slots=1))
            probe = LatencyProbe(scenario, gw)
            probe.warmup = [one_latency_job(gw, probe.namespace, i % gw.replicas)
                            for i in range(WARMUP_JOBS * gw.replicas)]
            probes.append(probe)
        steps = [(probe, cross) for probe in probes for cross in (False, True)
                 if not cross or probe.gw.replicas > 1]
        watch = CpuWatch()
        for index in range(jobs):
            turn = index % len(steps)
            for probe, cross in steps[turn:] + steps[:turn]:
                probe.step(index, cross)
            if (index + 1) % 50 == 0:
                print(f"  latency: {index + 1}/{jobs} rounds", file=sys.stderr)
        cpu = watch.stop()
    return {probe.scenario.label: probe.results(cpu) for probe in probes}


# -- b. throughput ------------------------------------------------------------------------------------------


def submit_all(gw: Stack, namespace: str, jobs: int, batch: int) -> tuple[list[int], list[str]]:
    """Submit `jobs` echo jobs from THREADS threads, one httpx client per thread and replica (made beforehand),
    `batch` jobs per request (`{"Jobs": [...]}` when more than one), request i through replica i % replicas; the
    submit times and errors (one per job)."""
    job = probe_job(namespace, "echo", "x")
    sizes = [min(batch, jobs - start) for start in range(0, jobs, batch)]
    # made before the first submission: an httpx client costs ~16 ms of CPU to make, which is the client's
    # business, not the time the system under test takes
    spare = [[http_client(url) for url in gw.urls] for _ in range(min(THREADS, len(sizes)))]
    clients = [client for made in spare for client in made]
    local = threading.local()

    def submit(index: int) -> tuple[int, list[str]]:
        if not hasattr(local, "clients"):
            local.clients = spare.pop()  # atomic: each thread has a list of its own
        before = time.time_ns()
        client = local.clients[index % gw.replicas]
        try:
            if batch == 1:
                gw.submit(client, job)
            else:
                gw.submit_all(client, [job] * sizes[index])
        except (BenchError, httpx.HTTPError) as exc:
            return before, [f"{type(exc).__name__}: {exc}"] * sizes[index]
        return before, []

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(submit, range(len(sizes))))
    finally:
        for client in clients:
            client.close()
    return [t for t, _ in results], [e for _, errors in results for e in errors]


def bench_throughput(root: Path, scenario: Scenario, agents: int, batch: int, jobs: int,
                     round_: int = 0) -> dict[str, Any]:
    namespace = f"bench-throughput-{agents}-{batch}-{uuid.uuid4().hex[:8]}"
    with stack(root, f"{scenario.label}-throughput-{agents}-{batch}-r{round_}", scenario.new_database(),
               scenario.replicas, agents=agents, slots=SLOTS_PER_AGENT, queue=QUEUE_PER_AGENT) as gw:
        # Warm every replica up (first requests, imports); each agent still compiles the module on first use.
        for client in gw.clients:
            gw.submit(client, probe_job(namespace + "-warmup", "echo", "warm"))
        wait_for(lambda: not gw.active(namespace + "-warmup"), timeout=60, what="the warm-up jobs")
        watch = CpuWatch()
        began = time.monotonic()
        submit_times, errors = submit_all(gw, namespace, jobs, batch)
        submitted = time.monotonic()
        deadline = max(300.0, jobs * 1.0)
        wait_for(lambda: not gw.active(namespace), timeout=deadline, interval=DONE_POLL_S,
                 what=f"{jobs} jobs to finish")
        observed = time.monotonic()
        cpu = watch.stop()
        finished = {state: gw.all_jobs(namespace, state) for state in TERMINAL}
    completed = finished["Completed"]
    first = min(submit_times)
    last_done = max((j["ModifyTime"] for j in completed), default=first)
    elapsed_s = (last_done - first) / 1e9
    return {
        "jobs": jobs, "agents": agents, "batch": batch, "max_executions": SLOTS_PER_AGENT, "queue": QUEUE_PER_AGENT,
        "threads": THREADS,
        **({"replicas": scenario.replicas, "submitted_through": "replicas in turn",
            "agents_poll_replicas": [i % scenario.replicas for i in range(agents)]} if scenario.replicas > 1 else {}),
        "namespace": namespace,
        "completed": len(completed), "failed": len(finished["Failed"]), "stopped": len(finished["Stopped"]),
        "submit_errors": errors[:20], "submit_error_count": len(errors),
        "submit_phase_s": submitted - began,
        "elapsed_s": elapsed_s,  # first submission → last job's ModifyTime (the gateway's clock, same host)
        "observed_elapsed_s": observed - began,  # first submission → the bench saw no active job
        "jobs_per_s": len(completed) / elapsed_s if elapsed_s > 0 else 0.0,
        "submit_jobs_per_s": jobs / (submitted - began),
        "failures": [{"ID": j["ID"], "State": j["State"]} for j in finished["Failed"] + finished["Stopped"]][:20],
        "cpu": cpu,
    }


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one throughput measurement as one: the jobs and times added up (so jobs/s is all the
    Completed jobs over all the rounds' elapsed time), each round kept under "rounds"."""
    first = rounds[0]
    total = {key: sum(r[key] for r in rounds) for key in ("jobs", "completed", "failed", "stopped",
                                                            "submit_error_count", "submit_phase_s", "elapsed_s",
                                                            "observed_elapsed_s")}
    return {
        "jobs": total["jobs"], "agents": first["agents"], "batch": first["batch"],
        "max_executions": first["max_executions"],
        "threads": first["threads"],
        **{key: first[key] for key in ("replicas", "submitted_through", "agents_poll_replicas") if key in first},
        **{key: total[key] for key in ("completed", "failed", "stopped")},
        "submit_errors": [e for r in rounds for e in r["submit_errors"]][:20],
        "submit_error_count": total["submit_error_count"],
        "submit_phase_s": total["submit_phase_s"], "elapsed_s": total["elapsed_s"],
        "observed_elapsed_s": total["observed_elapsed_s"],
        "jobs_per_s": total["completed"] / total["elapsed_s"] if total["elapsed_s"] > 0 else 0.0,
        "submit_jobs_per_s": total["jobs"] / total["submit_phase_s"],
        "failures": [f for r in rounds for f in r["failures"]][:20],
        "jobs_per_s_by_round": [r["jobs_per_s"] for r in rounds],
        "rounds": rounds,
    }


# -- report -------------------------------------------------------------------------------------------------


def row(backend: str, replicas: int, latency: dict[str, Any] | None, cross: dict[str, Any] | None,
        throughput: list[dict[str, Any]]) -> dict[str, Any]:
    """The table's figures for one scenario (kept in the JSON too)."""
    lat = latency["submit_to_start_ms"] if latency else None
    crossed = cross["submit_to_start_ms"] if cross else None
    measured = [m for m in (latency, cross, *(r for t in throughput for r in t["rounds"])) if m]
    return {
        "backend": backend, "replicas": replicas,
        "latency_jobs": latency["jobs"] if latency else 0, "cross_replica_jobs": cross["jobs"] if cross else 0,
        "dispatch_p50_ms": lat["p50"] if lat else None, "dispatch_p99_ms": lat["p99"] if lat else None,
        "cross_replica_p50_ms": crossed["p50"] if crossed else None,
        "cross_replica_p99_ms": crossed["p99"] if crossed else None,
        "throughput": [{"agents": t["agents"], "batch": t["batch"], "jobs": t["jobs"], "jobs_per_s": t["jobs_per_s"],
                        "jobs_per_s_by_round": t["jobs_per_s_by_round"],
                        "not_completed": t["jobs"] - t["completed"] + t["submit_error_count"]} for t in throughput],
        "other_cores_max": max(m["cpu"]["other_cores"] for m in measured) if measured else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    def ms(value: float | None) -> str:
        return NA if value is None else f"{value:.1f}"

    def rate(entry: dict[str, Any], agents: int, batch: int) -> str:
        for t in entry["throughput"]:
            if (t["agents"], t["batch"]) == (agents, batch):
                bad = f" (**{t['not_completed']} not completed**)" if t["not_completed"] else ""
                return f"{t['jobs_per_s']:.1f}{bad}"
        return NA

    lines = ["| backend | replicas | dispatch p50 (ms) | dispatch p99 (ms) | cross-replica p50 (ms) "
             f"| cross-replica p99 (ms) | jobs/s, 1 agent | jobs/s, 4 agents | jobs/s, 4 agents, {BATCH} per request "
             "| jobs (latency / cross / throughput) | others' CPU (cores) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    for entry in rows:
        counts = sorted({t["jobs"] for t in entry["throughput"]})
        lines.append(
            f"| {names.get(entry['backend'], entry['backend'])} | {entry['replicas']} | {ms(entry['dispatch_p50_ms'])} "
            f"| {ms(entry['dispatch_p99_ms'])} | {ms(entry['cross_replica_p50_ms'])} "
            f"| {ms(entry['cross_replica_p99_ms'])} | {rate(entry, 1, 1)} | {rate(entry, 4, 1)} "
            f"| {rate(entry, 4, BATCH)} "
            f"| {entry['latency_jobs']} / {entry['cross_replica_jobs'] or NA} / "
            f"{'/'.join(str(c) for c in counts) or NA} | {ms(entry['other_cores_max'])} |")
    return "\n".join(lines)


def csv_ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated positive numbers expected")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs (30 latency, 200 throughput)")
    parser.add_argument("--backends", type=csv_subset(BACKENDS), default=list(BACKENDS),
                        help="which databases to measure (default sqlite,postgres)")
    parser.add_argument("--replicas", type=csv_ints, default=[1, 3],
                        help="gateway replica counts to measure on PostgreSQL (default 1,3); SQLite always has 1")
    parser.add_argument("--latency-jobs", type=int, help="latency (and cross-replica) jobs (default 200, quick 30)")
    parser.add_argument("--throughput-jobs", type=int,
                        help="jobs per throughput measurement, over all its rounds (default 2000, quick 200)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="throughput rounds, the scenarios' order reversed every other round (default 2)")
    parser.add_argument("--json", type=Path, default=RESULTS / "dispatch.json",
                        help="where to write the results (default bench/results/dispatch.json)")
    args = parser.parse_args()
    # rounds of 1,000 jobs (100 quick): one of 250 jobs, at 900 jobs/s, lasted a quarter of a second, of which the
    # first and the last batch were a large part
    latency_jobs, throughput_jobs = (30, 200) if args.quick else (200, 2000)
    latency_jobs = args.latency_jobs or latency_jobs
    throughput_jobs = args.throughput_jobs or throughput_jobs
    rounds = max(1, min(args.rounds, throughput_jobs))
    per_round = [throughput_jobs // rounds + (1 if r < throughput_jobs % rounds else 0) for r in range(rounds)]

    began = time.monotonic()
    results: dict[str, Any] = {"machine": machine() | {"database": "sqlite (default, in the data dir)"},
                               "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["parameters"] = {
        "backends": args.backends, "postgres_replicas": args.replicas if "postgres" in args.backends else [],
        "latency_jobs": latency_jobs, "cross_replica_jobs": latency_jobs, "latency_interleaved": True,
        "throughput_jobs": throughput_jobs, "throughput_rounds": per_round,
        "throughput_runs": [{"agents": agents, "batch": batch} for agents, batch in THROUGHPUT_RUNS],
        "slots_per_agent": SLOTS_PER_AGENT, "queue_per_agent": QUEUE_PER_AGENT, "submit_threads": THREADS,
        "publisher": PUBLISHER, "wasm_module": str(TICK.relative_to(ROOT)), "wasm_module_bytes": len(_tick()),
        "job_spec_bytes": len(json.dumps(probe_job("namespace", "echo", "x"))),
        "warmup_latency_jobs_per_replica": WARMUP_JOBS, "pacing_s": PACING_S,
        "latency_poll_s": LATENCY_POLL_S, "gateway_settings": "defaults (SHOAL_* of the caller dropped)"}
    pg: Postgres | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
            root = Path(tmp)
            scenarios = []
            if "sqlite" in args.backends:
                scenarios.append(Scenario("sqlite", 1, lambda: ""))
            if "postgres" in args.backends:
                pg = Postgres().start()
                BUSY_ROOTS.append(pg.postmaster_pid())
                results["postgres"] = pg.describe()
                scenarios += [Scenario("postgres", n, pg.create_database) for n in args.replicas]
            names = ", ".join(s.label for s in scenarios)
            print(f"latency: {latency_jobs} rounds, interleaved over {names}", file=sys.stderr)
            latency = bench_latency(root, scenarios, latency_jobs)
            measurements = [(s, agents, batch) for s in scenarios for agents, batch in THROUGHPUT_RUNS]
            throughput: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
            for round_, jobs in enumerate(per_round):
                for scenario, agents, batch in measurements if round_ % 2 == 0 else measurements[::-1]:
                    print(f"throughput round {round_ + 1}/{rounds}: {scenario.label}, {jobs} jobs, {agents} agent(s),"
                          f" {batch} per request", file=sys.stderr)
                    run = bench_throughput(root, scenario, agents, batch, jobs, round_)
                    throughput.setdefault((scenario.label, agents, batch), []).append(run)
    except BaseException:
        if pg is not None:
            print(f"--- postgres server log (last lines) ---\n{pg.tail()}", file=sys.stderr)
        raise
    finally:
        if pg is not None:
            pg.stop()

    rows: list[dict[str, Any]] = []
    for scenario in scenarios:
        lat, cross = latency[scenario.label]
        runs = [combine(throughput[(scenario.label, agents, batch)]) for agents, batch in THROUGHPUT_RUNS]
        rows.append(row(scenario.backend, scenario.replicas, lat, cross, runs))
        if scenario.backend == "sqlite":
            results["latency"], results["throughput"] = lat, runs
        else:
            results.setdefault("scenarios", []).append({
                "backend": scenario.backend, "replicas": scenario.replicas, "latency": lat,
                "cross_replica_latency": cross, "throughput": runs})
    results["table"] = rows
    results["duration_s"] = time.monotonic() - began

    write_json(args.json, results)
    print(table(rows))
    info = results["machine"]
    version = results.get("postgres", {}).get("settings", {}).get("server_version")
    print(f"\n{info['cpu_count']} CPUs, Python {info['python']}, shoal {info['shoal']}"
          f"{f', PostgreSQL {version}' if version else ''}; `{PUBLISHER}` publisher; latency interleaved, "
          f"throughput in {rounds} round(s); {results['duration_s']:.0f} s; JSON: {args.json}")
    ok = all(t["not_completed"] == 0 for r in rows for t in r["throughput"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
