"""Partitions benchmark: one WASM batch job with Count 1000 (`--quick` 200) run by 4 agents.

    .venv/bin/python bench/partitions.py [--quick] [--count N] [--rounds R] [--agents A] [--json PATH]

Goal: every partition done (exactly one Completed execution each, none run successfully twice); partitions/s
reported.

Each round starts fresh processes on 127.0.0.1, as dispatch.py does: one `shoal serve` (SQLite, defaults) and
4 `shoal agent` processes with `--max-executions 2 --queue 1`. A warm-up job (Count = agents x slots) runs first,
so the first compilations of the module are mostly out of the way. Then one batch job of the tick module
(`tick echo x`, sent inline, `noop` publisher) with Count N: the time runs from just before its
`PUT /api/v1/orchestrator/jobs` to the job's ModifyTime when the gateway marked it Completed (same host clock);
partitions/s = N / that time. The job's executions (`GET …/jobs/<id>?include=executions`) are then checked: each
partition 0..N-1 has exactly one Completed execution with exit code 0 and output `x`. R rounds (default 3, quick
1): median, min and max. The JSON has every round's figures, the executions per agent, retries and CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from harness import JOBS, RESULTS, TERMINAL, BenchError, CpuWatch, Stack, machine, stack, wait_for, write_json
from scale import batch_job, fmt, md_table, verdict

SLOTS = 2
QUEUE = 1  # executions an agent takes ahead of its free slots
DONE_POLL_S = 0.1


def job_state(gw: Stack, namespace: str, job_id: str, executions: bool = False) -> dict[str, Any]:
    params = {"namespace": namespace} | ({"include": "executions"} if executions else {})
    response = gw.api.get(f"{JOBS}/{job_id}", params=params)
    if response.status_code != 200:
        raise BenchError(f"GET job {job_id} answered {response.status_code}: {response.text[:300]}")
    return dict(response.json())


def run_job(gw: Stack, namespace: str, count: int, timeout: float) -> tuple[int, dict[str, Any]]:
    """Submit one Count-`count` job and wait until it ends; the submit clock and the job with its executions."""
    spec = batch_job(namespace, count, "echo", "x")
    submitted = time.time_ns()
    job_id = gw.submit(gw.api, spec)

    def ended() -> bool:
        return job_state(gw, namespace, job_id)["Job"]["State"]["StateType"] in TERMINAL

    wait_for(ended, timeout=timeout, interval=DONE_POLL_S, what=f"job {job_id} ({count} partitions) to end")
    return submitted, job_state(gw, namespace, job_id, executions=True)


def check_partitions(body: dict[str, Any], count: int) -> dict[str, Any]:
    """Each partition's Completed executions (exactly one each, exit 0, stdout `x`), retries, and per node."""
    executions = body["Executions"]["Items"]
    completed = [e for e in executions if e["ComputeState"]["StateType"] == "Completed"]
    per_partition = Counter(e["PartitionIndex"] for e in completed)
    missing = [p for p in range(count) if per_partition[p] == 0]
    twice = sorted(p for p, n in per_partition.items() if n > 1)
    wrong = [e["ID"] for e in completed
             if (e.get("RunOutput") or {}).get("ExitCode") != 0 or (e.get("RunOutput") or {}).get("Stdout") != "x\n"]
    return {
        "executions": len(executions), "completed_partitions": len(per_partition), "missing_partitions": missing[:50],
        "missing_count": len(missing), "partitions_completed_twice": twice[:50], "twice_count": len(twice),
        "wrong_output": wrong[:20], "wrong_output_count": len(wrong),
        "retries": sum(1 for e in executions if e["Attempt"] > 1),
        "states": dict(Counter(e["ComputeState"]["StateType"] for e in executions)),
        "per_node": dict(Counter(e["NodeID"] for e in completed)),
    }


def one_round(root: Path, index: int, count: int, agents: int) -> dict[str, Any]:
    """A fresh gateway and agents, a warm-up job, then the measured job."""
    namespace = f"bench-partitions-{uuid.uuid4().hex[:8]}"
    timeout = max(300.0, count * 1.0)
    with stack(root, f"round-{index}", "", replicas=1, agents=agents, slots=SLOTS, queue=QUEUE) as gw:
        _, warm = run_job(gw, namespace + "-warmup", agents * SLOTS, timeout=120)
        watch = CpuWatch()
        submitted, body = run_job(gw, namespace, count, timeout)
        observed = time.time_ns()
        cpu = watch.stop()
    job = body["Job"]
    elapsed_s = (job["ModifyTime"] - submitted) / 1e9
    check = check_partitions(body, count)
    ok = (job["State"]["StateType"] == "Completed" and check["missing_count"] == 0 and check["twice_count"] == 0
          and check["wrong_output_count"] == 0)
    return {"round": index, "job_id": job["ID"], "namespace": namespace, "count": count, "agents": agents,
            "max_executions": SLOTS, "queue": QUEUE, "state": job["State"], "ok": ok, "elapsed_s": elapsed_s,
            "observed_elapsed_s": (observed - submitted) / 1e9, "partitions_per_s": count / elapsed_s,
            "check": check, "warmup_state": warm["Job"]["State"]["StateType"], "cpu": cpu}


def report(rounds: list[dict[str, Any]], overall: dict[str, Any]) -> str:
    rows = []
    for r in rounds:
        c = r["check"]
        spread = "/".join(str(n) for n in sorted(c["per_node"].values(), reverse=True))
        rows.append([str(r["round"] + 1), str(r["count"]), r["state"]["StateType"], fmt(r["elapsed_s"], 2),
                     fmt(r["partitions_per_s"]), f"{c['completed_partitions']}/{r['count']}", str(c["twice_count"]),
                     str(c["retries"]), spread, fmt(r["cpu"]["other_cores"], 2), verdict(r["ok"])])
    table = md_table(["round", "partitions", "job", "submit → Completed (s)", "partitions/s", "partitions done",
                      "done twice", "retries", "executions per agent", "others' CPU (cores)",
                      "goal: all done, none twice"], rows, {1, 3, 4, 6, 7, 9})
    summary = (f"partitions/s over {len(rounds)} round(s): median {fmt(overall['median'])}, "
               f"min {fmt(overall['min'])}, max {fmt(overall['max'])}; goal (all partitions done, none twice): "
               f"{verdict(overall['ok'])}")
    return f"{table}\n\n{summary}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Count 200, 1 round")
    parser.add_argument("--count", type=int, help="partitions (Count) of the job (default 1000, quick 200)")
    parser.add_argument("--rounds", type=int, help="rounds, each on fresh processes (default 3, quick 1)")
    parser.add_argument("--agents", type=int, default=4, help="agents, each --max-executions 2 (default 4)")
    parser.add_argument("--json", type=Path, default=RESULTS / "partitions.json",
                        help="where to write the results (default bench/results/partitions.json)")
    args = parser.parse_args()
    count = args.count or (200 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    if count < 1 or rounds < 1 or args.agents < 1:
        parser.error("--count, --rounds and --agents must be positive")
    began = time.monotonic()
    results: dict[str, Any] = {"machine": machine() | {"database": "sqlite (default, in the data dir)"},
                               "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["parameters"] = {"count": count, "rounds": rounds, "agents": args.agents, "max_executions": SLOTS,
                             "queue": QUEUE,
                             "task": "tick echo x (inline module)", "publisher": "noop",
                             "warmup_count": args.agents * SLOTS, "gateway_settings": "defaults"}
    runs = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-partitions-") as tmp:
        for index in range(rounds):
            print(f"round {index + 1}/{rounds}: Count {count}, {args.agents} agents", file=sys.stderr)
            runs.append(one_round(Path(tmp), index, count, args.agents))
    rates = [r["partitions_per_s"] for r in runs]
    overall = {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
               "ok": all(r["ok"] for r in runs)}
    results |= {"rounds": runs, "partitions_per_s": overall, "duration_s": time.monotonic() - began}
    write_json(args.json, results)
    print(report(runs, overall))
    info = results["machine"]
    print(f"\n{info['cpu_count']} CPUs, Python {info['python']}, shoal {info['shoal']}; one gateway (SQLite), "
          f"{args.agents} agents x {SLOTS} slots (queue {QUEUE}); {results['duration_s']:.0f} s; JSON: {args.json}")
    return 0 if overall["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
