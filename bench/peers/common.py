"""What the peer benchmarks share: arguments, processes on loopback in their own process groups, statistics, JSON.

Runs under bench/.peers-venv (see bench/peers/setup), not Shoal's environment: nothing here imports Shoal or
bench/harness.py. The statistics are the same as harness.py's (nearest-rank percentiles).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
PACING_S = 0.05  # pause after a latency job is seen finished, so that the worker is idle and waiting again
WARMUP_JOBS = 2  # latency jobs run first and left out of the figures


class PeerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Counts:
    """How much work a run does; the defaults of each peer (full and --quick) differ."""

    latency_jobs: int
    throughput_jobs: int
    rounds: int


def parse_args(peer: str, full: Counts, quick: Counts, argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments both peers take. Counts left out come from `full`, or from `quick` with --quick."""
    parser = argparse.ArgumentParser(description=f"Dispatch latency and throughput of {peer} (see bench/README.md)")
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer jobs: {quick.latency_jobs} latency, {quick.rounds} x {quick.throughput_jobs}")
    parser.add_argument("--latency-jobs", type=int, help=f"default {full.latency_jobs}")
    parser.add_argument("--throughput-jobs", type=int, help=f"jobs per round, default {full.throughput_jobs}")
    parser.add_argument("--workers", type=int, default=4, help="K, the workers of the throughput runs")
    parser.add_argument("--rounds", type=int, help=f"throughput rounds, default {full.rounds}")
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = parser.parse_args(argv)
    counts = quick if args.quick else full
    args.latency_jobs = counts.latency_jobs if args.latency_jobs is None else args.latency_jobs
    args.throughput_jobs = counts.throughput_jobs if args.throughput_jobs is None else args.throughput_jobs
    args.rounds = counts.rounds if args.rounds is None else args.rounds
    if min(args.latency_jobs, args.throughput_jobs, args.workers, args.rounds) < 1:
        parser.error("counts must be at least 1")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Calls `condition` every `interval` seconds until it returns something true, and returns that; raises
    PeerError when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise PeerError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- processes ----------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A process started in a session (process group) of its own, its output in `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise PeerError(f"{self.name} exited with {self.popen.returncode}")

    def stop(self) -> None:
        """SIGTERM to the whole group (a Celery worker's pool children, a Prefect worker's flow-run processes),
        SIGKILL to the group if it has not exited after 15 s."""
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure no straggler of its group stays behind.
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            break

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    """The processes of one benchmark, all stopped by `close()`; on failure `report()` prints their logs' tails."""

    root: Path
    env: Mapping[str, str]
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] | None = None) -> Proc:
        log = self.root / f"{name}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**self.env, **(extra_env or {})}, cwd=self.root, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        for proc in self.procs:
            proc.check()

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.procs.remove(proc)

    def report(self) -> None:
        for proc in self.procs:
            print(f"--- {proc.name} log (last lines) ---\n{proc.tail()}", file=sys.stderr)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def loopback_env() -> dict[str, str]:
    """The caller's environment with loopback exempt from proxies."""
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# -- statistics and results ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "min": min(values),
            "mean": statistics.fmean(values)}


def latency_result(latencies_ms: list[float], warmup_jobs: int, **extra: Any) -> dict[str, Any]:
    return {"jobs": len(latencies_ms), "warmup_jobs": warmup_jobs, **extra,
            "submit_to_start_ms": summary(latencies_ms), "latencies_ms": latencies_ms}


def throughput_round(jobs: int, completed: int, failed: int, elapsed_s: float, **extra: Any) -> dict[str, Any]:
    return {"jobs": jobs, "completed": completed, "failed": failed, "elapsed_s": elapsed_s,
            "jobs_per_s": completed / elapsed_s if elapsed_s > 0 else None, **extra}


def throughput_result(jobs: int, workers: int, rounds: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    rates = [r["jobs_per_s"] for r in rounds if r["jobs_per_s"] is not None]
    figures = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)} if rates else None
    return {"jobs_per_round": jobs, "workers": workers, **extra, "rounds": rounds, "jobs_per_s": figures}


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def print_summary(peer: str, results: dict[str, Any]) -> None:
    """A few lines for a person, on stdout (bench/run puts them in its summary; progress goes to stderr)."""
    print(f"{peer}: {results['duration_s']:.0f} s\n")
    for config in results["configurations"]:
        lat = config["latency"]["submit_to_start_ms"]
        line = f"- {config['name']}: submit -> start p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
        throughput = config["throughput"]
        rates = throughput["jobs_per_s"]
        if rates:
            failed = sum(r["failed"] for r in throughput["rounds"])
            line += (f"; {throughput['workers']} workers: {rates['median']:.1f} jobs/s median "
                     f"({rates['min']:.1f}-{rates['max']:.1f}) over {len(throughput['rounds'])} x "
                     f"{throughput['jobs_per_round']} jobs, {failed} failed")
        print(line)


def run_peer(peer: str, args: argparse.Namespace, procs: Procs, began: float,
             measure: Callable[[], list[dict[str, Any]]], versions: Callable[[], dict[str, str]],
             parameters: dict[str, Any]) -> int:
    """Runs `measure` (it starts its processes through `procs`), stops every process and removes the temp dir
    whatever happens, writes the JSON and prints the summary. Returns the exit code: 1 if the measurement failed
    (after the last lines of each process's log) or if any throughput job did not complete."""
    try:
        configurations = measure()
    except PeerError as error:
        procs.report()
        print(f"{peer}: {error}", file=sys.stderr)
        return 1
    except BaseException:
        procs.report()
        raise
    finally:
        procs.close()
        shutil.rmtree(procs.root, ignore_errors=True)
    results = {
        "peer": peer, "versions": versions(), "machine": machine(),
        "parameters": {"latency_jobs": args.latency_jobs, "warmup_jobs": WARMUP_JOBS, "pacing_s": PACING_S,
                       "throughput_jobs": args.throughput_jobs, "workers": args.workers, "rounds": args.rounds,
                       "quick": args.quick, **parameters},
        "configurations": configurations,
        "duration_s": time.monotonic() - began,
    }
    write_json(args.json, results)
    print_summary(peer, results)
    failed = sum(r["failed"] for c in configurations for r in c["throughput"]["rounds"])
    if failed:
        print(f"{peer}: {failed} throughput job(s) did not complete: see {args.json}", file=sys.stderr)
        return 1
    return 0
