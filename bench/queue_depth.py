"""Queue-depth benchmark: how long a claim takes with 100,000 executions waiting (`--quick` 10,000).

    .venv/bin/python bench/queue_depth.py [--quick] [--depth N] [--jobs J] [--cases engine,label,claimable]
                                          [--json PATH]

Goal: claim latency with the deep queue within 2x of the same measurement on an empty queue (p50 and p99 each).

Each case has its own `shoal serve` (SQLite, defaults) on 127.0.0.1, with a backlog built while no node is
registered: batch jobs of Count 1000 (N / 1000 submissions, one after another; each creates 1000 executions,
gateway/store.py `_schedule`) with a QueueTimeout of a week, so they wait as Queued instead of failing. How long
the submissions took is reported (submissions/s, executions/s). Then:

(a) executions the measuring node can NOT run, which its claim has to pass over; the claim is measured as
    dispatch.py's dispatch latency (its `one_latency_job`: `tick now` WASM jobs one after another, task clock -
    submit clock, 50 ms pacing) with one real `shoal agent` (wasm, `--max-executions 1`):
    - `engine`: the backlog is Docker jobs (the agents get DOCKER_HOST at a missing socket: wasm only);
    - `label`: the backlog is WASM jobs with a label constraint (`bench-queue = elsewhere`) the agent lacks.
    Compared with a gateway with an empty queue and the same agent; the cases' jobs take turns.
(b) `claimable`: executions the node CAN run (`tick echo x`); the claim is the HTTP round trip of one
    `POST /api/v1/compute/poll` (FreeSlots 1) by a node the benchmark registers itself, answered with its
    assignment; the benchmark then reports it complete (exit 0, nothing published), so the node's active set
    stays empty and the queue loses one execution per sample. Compared with an empty queue, where each sample
    first submits one Count-1 job and then polls (the submission is not timed).

A case whose jobs are never dispatched (60 s per job) is reported as such, dropped from the rotation, and makes
the exit status 1. The JSON has the raw samples, the per-submission times and CPU accounting.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatch import WARMUP_JOBS, latency_figures, one_latency_job
from harness import RESULTS, BenchError, CpuWatch, Stack, csv_subset, http_client, machine, stack, summary, write_json
from scale import (
    FAR_FUTURE_S,
    NODES,
    HttpNode,
    batch_job,
    docker_job,
    fmt,
    md_table,
    node_info,
    stats,
    verdict,
    within,
)

PER_JOB = 1000  # executions per backlog submission (Count)
FACTOR = 2.0
CASES = ("engine", "label", "claimable")
CONSTRAINT = {"Key": "bench-queue", "Operator": "=", "Values": ["elsewhere"]}
CLAIM_WAIT_S = 5.0  # the (b) poll's Wait: with work waiting it answers at once
CLAIM_WARMUP = 2
# The agents must not offer Docker (the `engine` backlog is Docker jobs): they inherit this environment, and
# the Docker SDK they use finds no engine at a socket that does not exist.
NO_DOCKER = "unix:///nonexistent/shoal-bench-no-docker.sock"


def backlog_spec(case: str, namespace: str, count: int) -> dict[str, Any]:
    """One backlog submission of `case`: `count` executions, waiting up to a week for a node."""
    if case == "engine":
        return docker_job(namespace, count, queue_timeout=FAR_FUTURE_S)
    constraints = [CONSTRAINT] if case == "label" else None
    return batch_job(namespace, count, "echo", "x", constraints=constraints, queue_timeout=FAR_FUTURE_S)


@dataclass
class Case:
    """One gateway and what was measured on it."""

    name: str
    gw: Stack
    namespace: str = field(default_factory=lambda: f"bench-queue-{uuid.uuid4().hex[:8]}")
    build: dict[str, Any] = field(default_factory=dict)
    warmup: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    failure: str = ""


def build_backlog(case: Case, depth: int) -> None:
    """Submit `depth` executions in jobs of PER_JOB, one after another, timing each submission; then check they
    all wait as Queued."""
    client = case.gw.api
    counts = [PER_JOB] * (depth // PER_JOB) + ([depth % PER_JOB] if depth % PER_JOB else [])
    times_ms: list[float] = []
    began = time.monotonic()
    watch = CpuWatch()
    for index, count in enumerate(counts):
        before = time.monotonic()
        case.gw.submit(client, backlog_spec(case.name, case.namespace, count))
        times_ms.append((time.monotonic() - before) * 1000)
        if (index + 1) % 25 == 0:
            print(f"  {case.name}: {index + 1}/{len(counts)} submissions", file=sys.stderr)
    elapsed = time.monotonic() - began
    cpu = watch.stop()
    queued = len(case.gw.all_jobs(case.namespace, "Queued"))
    if queued != len(counts):
        raise BenchError(f"{case.name}: {queued} of {len(counts)} backlog jobs are Queued")
    case.build = {"executions": depth, "submissions": len(counts), "count_per_submission": PER_JOB,
                  "elapsed_s": elapsed, "submissions_per_s": len(counts) / elapsed,
                  "executions_per_s": depth / elapsed, "submit_ms": summary(times_ms), "submit_ms_raw": times_ms,
                  "queued_jobs": queued, "cpu": cpu}


def check_engines(gw: Stack, wanted: list[str]) -> None:
    """Every node of the gateway offers exactly `wanted` engines (the agent read no Docker engine)."""
    response = gw.api.get(NODES)
    response.raise_for_status()
    for node in response.json()["Nodes"]:
        engines = sorted(node["Info"]["ComputeNodeInfo"]["ExecutionEngines"])
        if engines != sorted(wanted):
            raise BenchError(f"node {node['Info']['NodeID']} offers {engines}, expected {wanted}")


# -- (a) dispatch latency past executions the agent cannot run ----------------------------------------------------


def dispatch_step(case: Case, keep: list[dict[str, Any]]) -> None:
    """One latency job on `case`; a job that is not dispatched (or fails) ends the case."""
    try:
        keep.append(one_latency_job(case.gw, case.namespace + "-probe"))
    except BenchError as exc:
        case.failure = str(exc)
        print(f"  {case.name}: {exc}", file=sys.stderr)


def dispatch_cases(cases: list[Case], jobs: int) -> dict[str, Any]:
    """Warm-up jobs on each gateway, then job i of every case in an order that rotates, then job i + 1..."""
    for case in cases:
        for _ in range(WARMUP_JOBS):
            if not case.failure:
                dispatch_step(case, case.warmup)
    watch = CpuWatch()
    for index in range(jobs):
        live = [c for c in cases if not c.failure]
        if not live:
            break
        turn = index % len(live)
        for case in live[turn:] + live[:turn]:
            dispatch_step(case, case.runs)
        if (index + 1) % 25 == 0:
            print(f"  dispatch: {index + 1}/{jobs} rounds", file=sys.stderr)
    return {"cpu": watch.stop()}


# -- (b) the poll round trip that claims a runnable execution ----------------------------------------------------


def claim_sample(case: Case, node: HttpNode, submit_first: bool) -> dict[str, Any]:
    """One timed poll that must bring one assignment, which is then reported complete. On the empty queue a
    Count-1 job is submitted first (not timed)."""
    if submit_first:
        case.gw.submit(case.gw.api, backlog_spec("claimable", case.namespace, 1))
    began = time.monotonic()
    status, executions = node.poll(1, CLAIM_WAIT_S)
    took_ms = (time.monotonic() - began) * 1000
    if status != 200 or len(executions) != 1:
        raise BenchError(f"{case.name}: the poll answered {status} with {len(executions)} assignments")
    node.complete(executions[0]["ExecutionID"])
    return {"claim_ms": took_ms, "execution_id": executions[0]["ExecutionID"],
            "partition": executions[0]["PartitionIndex"]}


def claim_cases(empty: Case, deep: Case, samples: int) -> dict[str, Any]:
    """Warm-up samples, then the empty and the deep queue's samples taking turns."""
    nodes = {}
    for case in (empty, deep):
        client = http_client(case.gw.urls[0])
        case.gw.clients.append(client)  # closed with the stack
        nodes[case.name] = HttpNode(client, node_info(f"claimer-{case.name}", ["wasm"])).register()
        case.warmup = [claim_sample(case, nodes[case.name], case is empty) for _ in range(CLAIM_WARMUP)]
    watch = CpuWatch()
    for index in range(samples):
        pair = (empty, deep) if index % 2 == 0 else (deep, empty)
        for case in pair:
            try:
                case.runs.append(claim_sample(case, nodes[case.name], case is empty))
            except BenchError as exc:
                case.failure = str(exc)
                raise
        if (index + 1) % 25 == 0:
            print(f"  claim: {index + 1}/{samples} rounds", file=sys.stderr)
    return {"cpu": watch.stop()}


# -- report -----------------------------------------------------------------------------------------------------


def figures(case: Case, key: str) -> dict[str, Any]:
    values = [r[key] for r in case.runs]
    extra = latency_figures(case.runs) if key == "submit_to_start_ms" and case.runs else {}
    return {"gateway": case.name, "samples": len(values), "summary_ms": stats(values), "raw_ms": values,
            "warmup": case.warmup, "runs": case.runs, "failure": case.failure, "build": case.build,
            "namespace": case.namespace} | {k: v for k, v in extra.items() if k == "breakdown_ms"}


def compare(deep: dict[str, Any], empty: dict[str, Any]) -> dict[str, Any]:
    """The goal: the deep queue's p50 and p99 each within FACTOR x the empty queue's."""
    d, e = deep["summary_ms"], empty["summary_ms"]
    if deep["failure"] or d is None or e is None:
        return {"met": False, "p50_ratio": None, "p99_ratio": None}
    p50, p99 = within(d["p50"], e["p50"], FACTOR), within(d["p99"], e["p99"], FACTOR)
    return {"met": bool(p50 and p99), "p50_ratio": d["p50"] / e["p50"], "p99_ratio": d["p99"] / e["p99"]}


def result_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, entry in results["cases"].items():
        deep, empty, goal = entry["deep"], entry["empty"], entry["goal"]
        d, e = deep["summary_ms"] or {}, empty["summary_ms"] or {}
        queue = f"{deep['build']['executions']:,}"
        measured = "dispatch latency" if name != "claimable" else "poll round trip"
        note = f"{fmt(goal['p50_ratio'], 2)}x / {fmt(goal['p99_ratio'], 2)}x" if goal["p50_ratio"] else ""
        if deep["failure"]:
            note = f"not dispatched: {deep['failure'][:80]}"
        rows.append([name, measured, queue, fmt(e.get("p50")), fmt(e.get("p99")), fmt(d.get("p50")),
                     fmt(d.get("p90")), fmt(d.get("p99")), fmt(d.get("max")), f"{deep['samples']}/{empty['samples']}",
                     f"{verdict(goal['met'])} {note}".strip()])
    return rows


def build_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, entry in results["cases"].items():
        b = entry["deep"]["build"]
        rows.append([name, f"{b['executions']:,}", str(b["submissions"]), fmt(b["elapsed_s"]),
                     fmt(b["submissions_per_s"], 2), f"{b['executions_per_s']:.0f}", fmt(b["submit_ms"]["p50"]),
                     fmt(b["submit_ms"]["max"])])
    return rows


def report(results: dict[str, Any]) -> str:
    claims = md_table(["case", "measured", "queue", "empty p50 (ms)", "empty p99 (ms)", "deep p50 (ms)",
                       "deep p90 (ms)", "deep p99 (ms)", "deep max (ms)", "samples deep/empty",
                       f"goal: p50 and p99 <= {FACTOR:g}x empty (p50 / p99 ratio)"], result_rows(results),
                      set(range(2, 10)))
    builds = md_table(["backlog", "executions", "submissions", "took (s)", "submissions/s", "executions/s",
                       "submit p50 (ms)", "submit max (ms)"], build_rows(results), set(range(1, 8)))
    return f"{claims}\n\nBuilding the queues (one submission after another, no node registered):\n\n{builds}"


# -- main -------------------------------------------------------------------------------------------------------


def measure(root: Path, cases: list[str], depth: int, jobs: int) -> dict[str, Any]:
    """Start the gateways, build the backlogs, measure (a) then (b); everything stopped at the end."""
    out: dict[str, Any] = {"cases": {}}
    with ExitStack() as running:
        def gateway(name: str) -> Case:
            return Case(name, running.enter_context(stack(root, name, "", replicas=1, agents=0, slots=1)))

        dispatch = [c for c in cases if c != "claimable"]
        empty_a = gateway("empty-dispatch") if dispatch else None
        deep = {name: gateway(name) for name in cases}
        empty_b = gateway("empty-claim") if "claimable" in cases else None
        for name, case in deep.items():
            print(f"building the {name} backlog: {depth} executions", file=sys.stderr)
            build_backlog(case, depth)
        if empty_a is not None:
            for case in [empty_a, *(deep[n] for n in dispatch)]:
                case.gw.start_agents(1, 1)
                check_engines(case.gw, ["wasm"])
            print(f"(a) dispatch latency: {jobs} rounds over empty, {', '.join(dispatch)}", file=sys.stderr)
            out["dispatch"] = dispatch_cases([empty_a, *(deep[n] for n in dispatch)], jobs)
            for name in dispatch:
                out["cases"][name] = {"deep": figures(deep[name], "submit_to_start_ms"),
                                      "empty": figures(empty_a, "submit_to_start_ms")}
        if empty_b is not None:
            print(f"(b) claim round trip: {jobs} rounds, empty and claimable", file=sys.stderr)
            try:
                out["claim"] = claim_cases(empty_b, deep["claimable"], jobs)
            except BenchError as exc:
                out["claim"] = {"failure": str(exc)}
            out["cases"]["claimable"] = {"deep": figures(deep["claimable"], "claim_ms"),
                                         "empty": figures(empty_b, "claim_ms")}
    for entry in out["cases"].values():
        entry["goal"] = compare(entry["deep"], entry["empty"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 executions, 30 samples per case")
    parser.add_argument("--depth", type=int, help="executions in each backlog (default 100000, quick 10000)")
    parser.add_argument("--jobs", type=int, help="latency jobs / claim samples per case (default 200, quick 30)")
    parser.add_argument("--cases", type=csv_subset(CASES), default=list(CASES),
                        help=f"which backlogs to measure (default {','.join(CASES)})")
    parser.add_argument("--json", type=Path, default=RESULTS / "queue_depth.json",
                        help="where to write the results (default bench/results/queue_depth.json)")
    args = parser.parse_args()
    depth = args.depth or (10_000 if args.quick else 100_000)
    jobs = args.jobs or (30 if args.quick else 200)
    if depth < 1 or jobs < 1:
        parser.error("--depth and --jobs must be positive")
    os.environ["DOCKER_HOST"] = NO_DOCKER  # inherited by the agents: see NO_DOCKER
    began = time.monotonic()
    results: dict[str, Any] = {"machine": machine() | {"database": "sqlite (default, in the data dir)"},
                               "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["parameters"] = {"depth": depth, "count_per_submission": PER_JOB, "samples": jobs, "cases": args.cases,
                             "queue_timeout_s": FAR_FUTURE_S, "label_constraint": CONSTRAINT,
                             "warmup_dispatch_jobs": WARMUP_JOBS, "warmup_claims": CLAIM_WARMUP,
                             "claim_poll_wait_s": CLAIM_WAIT_S, "goal_factor": FACTOR,
                             "agents_docker_host": NO_DOCKER,
                             "gateway_settings": "defaults (SHOAL_* of the caller dropped)"}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-queue-") as tmp:
        results |= measure(Path(tmp), args.cases, depth, jobs)
    results["duration_s"] = time.monotonic() - began
    write_json(args.json, results)
    print(report(results))
    info = results["machine"]
    others = {phase: results[phase]["cpu"]["other_cores"] for phase in ("dispatch", "claim")
              if "cpu" in results.get(phase, {})}
    print(f"\n{info['cpu_count']} CPUs, Python {info['python']}, shoal {info['shoal']}; one gateway per case "
          f"(SQLite); others' CPU (cores; > a few tenths: shared machine): "
          f"{', '.join(f'{k} {v:.2f}' for k, v in others.items()) or 'n/a'}; {results['duration_s']:.0f} s; "
          f"JSON: {args.json}")
    failed = [name for name, entry in results["cases"].items() if entry["deep"]["failure"] or entry["empty"]["failure"]]
    if failed:
        print(f"jobs not completed / claims not answered in: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
