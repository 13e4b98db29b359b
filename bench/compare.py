"""Shoal beside its peers: dispatch latency and throughput from bench/results/dispatch.json and the peers' JSON.

    .venv/bin/python bench/compare.py [--results DIR] [--json PATH]

Reads what `bench/dispatch.py` and `bench/peers/*_peer.py` wrote (it measures nothing itself), prints one markdown
table per benchmark with each system, its figure, Shoal's ratio to it and the goal, and writes the rows as JSON
(default bench/results/compare.json). A file that is missing is named in the output, never filled in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness import RESULTS, write_json

PEERS = {"prefect": "Prefect", "celery": "Celery + Redis"}
AGENTS = 4  # the throughput row: Shoal's 4 agents beside the peers' 4 workers


def load(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def shoal_rows(dispatch: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per scenario of dispatch.json (SQLite, PostgreSQL with 1 and 3 replicas)."""
    rows = []
    for entry in dispatch.get("table", []):
        names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
        label = f"Shoal, {names.get(entry['backend'], entry['backend'])}"
        if entry["backend"] != "sqlite":
            label += f", {entry['replicas']} replica{'s' if entry['replicas'] > 1 else ''}"
        throughput = {(t["agents"], t.get("batch", 1)): t["jobs_per_s"] for t in entry["throughput"]}
        rows.append({"system": label, "p50_ms": entry["dispatch_p50_ms"], "p99_ms": entry["dispatch_p99_ms"],
                     "jobs_per_s": throughput.get((AGENTS, 1)), "jobs": dispatch["parameters"]["throughput_jobs"]})
        for (agents, batch), rate in throughput.items():
            if agents == AGENTS and batch > 1:  # a throughput row only: its latency is the row above's
                rows.append({"system": f"{label}, {batch} jobs per request", "p50_ms": None, "p99_ms": None,
                             "jobs_per_s": rate, "jobs": dispatch["parameters"]["throughput_jobs"], "batch": batch})
    return rows


def peer_rows(peer: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for config in peer["configurations"]:
        latency = config["latency"]["submit_to_start_ms"]
        throughput = config["throughput"]
        name = PEERS.get(peer["peer"], peer["peer"])
        rows.append({"system": name if config["name"] == "default" else f"{name} ({config['name']})",
                     "p50_ms": latency["p50"], "p99_ms": latency["p99"],
                     "jobs_per_s": throughput["jobs_per_s"]["median"],
                     "jobs": throughput["jobs_per_round"] * len(throughput["rounds"]), "peer": peer["peer"],
                     "versions": peer["versions"]})
    return rows


def ratio(ours: float | None, theirs: float | None) -> str:
    return "n/a" if not ours or not theirs else f"{ours / theirs:.3g}"


def tables(shoal: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    prefect = min((r["p50_ms"] for r in rows if r.get("peer") == "prefect"), default=None)
    prefect_rate = max((r["jobs_per_s"] for r in rows if r.get("peer") == "prefect"), default=None)
    celery_rate = next((r["jobs_per_s"] for r in rows if r.get("peer") == "celery"), None)
    out = ["### Dispatch latency, submit → task start, idle agent or worker", "",
           "| system | p50 (ms) | p99 (ms) | Shoal (SQLite) p50 ÷ this p50 |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        if row["p50_ms"] is None:
            continue
        out.append(f"| {row['system']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                   f"{ratio(shoal['p50_ms'], row['p50_ms'])} |")
    goal = shoal["p50_ms"] <= 5 and shoal["p99_ms"] <= 25 and prefect is not None and shoal["p50_ms"] * 20 <= prefect
    out += ["", f"Goal: p50 ≤ 5 ms, p99 ≤ 25 ms, ≤ 1/20 of Prefect's: **{'met' if goal else 'missed'}**.", "",
            f"### Throughput, tiny jobs end to end, {AGENTS} agents or workers", "",
            "| system | jobs | jobs/s | Shoal (SQLite) ÷ this |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        rate = row["jobs_per_s"]
        out.append(f"| {row['system']} | {row['jobs']} | {'n/a' if rate is None else f'{rate:.1f}'} | "
                   f"{ratio(shoal['jobs_per_s'], rate)} |")
    batched = next((r for r in rows if r.get("batch") and r["system"].startswith(shoal["system"])), None)
    rate = max(shoal["jobs_per_s"] or 0.0, batched["jobs_per_s"] if batched else 0.0)
    goal = (rate >= 1000 and prefect_rate is not None and rate >= 10 * prefect_rate
            and celery_rate is not None and rate >= 0.5 * celery_rate)
    out += ["", f"Goal: ≥ 1,000 jobs/s, ≥ 10x Prefect, ≥ 0.5x Celery + Redis: **{'met' if goal else 'missed'}** "
                f"(Shoal on SQLite at its best: {rate:.1f} jobs/s)."]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the benchmarks wrote their JSON")
    parser.add_argument("--json", type=Path, default=RESULTS / "compare.json")
    args = parser.parse_args()
    dispatch = load(args.results / "dispatch.json")
    peers = {name: load(args.results / f"peer-{name}.json") for name in PEERS}
    missing = [name for name, data in [("dispatch", dispatch), *peers.items()] if data is None]
    if dispatch is None:
        print(f"no {args.results / 'dispatch.json'}: run bench/dispatch.py first", file=sys.stderr)
        return 1
    rows = shoal_rows(dispatch)
    for data in peers.values():
        if data is not None:
            rows += peer_rows(data)
    print(tables(rows[0], rows))
    if missing:
        print(f"\nNot measured in this run (no JSON): {', '.join(missing)}")
    write_json(args.json, {"rows": rows, "missing": missing, "dispatch_started": dispatch.get("started")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
