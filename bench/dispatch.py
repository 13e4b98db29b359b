"""Dispatch benchmark: submit → task start latency, and end-to-end throughput of tiny WASM jobs.

    .venv/bin/python bench/dispatch.py [--quick] [--json PATH]

Starts its own `shoal serve` and `shoal agent` processes on 127.0.0.1 (free ports, fresh temp data dirs: one
gateway per scenario), prints a markdown table and writes JSON (default bench/results/dispatch.json).
SHOAL_DATABASE_URL is passed through to the gateway (SQLite in the data dir when unset); every other SHOAL_*
variable is dropped so that nothing points the processes anywhere but loopback. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "fixtures" / "wasm" / "probe.wasm"
JOBS = "/api/v1/orchestrator/jobs"
HOST = "127.0.0.1"
TERMINAL = ("Completed", "Failed", "Stopped")
ACTIVE = ("Pending", "Queued", "Running")  # in lifecycle order: see Stack.active()

LATENCY_POLL_S = 0.01  # how often the latency loop asks whether its job finished
PACING_S = 0.05  # pause after a job completes so the agent is back in a waiting long-poll
WARMUP_JOBS = 2  # latency jobs run first and left out of the statistics (module compile, first imports)
THREADS = 16
SLOTS_PER_AGENT = 2
DONE_POLL_S = 0.05


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def child_env() -> dict[str, str]:
    """The environment without SHOAL_* settings (but SHOAL_DATABASE_URL) and with loopback exempt from proxies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_") or k == "SHOAL_DATABASE_URL"}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def http_client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=60, trust_env=False)


def probe_job(namespace: str, *args: str) -> dict[str, Any]:
    """The probe module sent inline, as tests/specs.py sends it (the s3managed publisher, so results upload)."""
    url = "data:application/octet-stream;base64," + base64.b64encode(PROBE.read_bytes()).decode()
    return {
        "Type": "batch",
        "Namespace": namespace,
        "Count": 1,
        "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "wasm", "Params": {"EntryModule": "/app/probe.wasm", "Parameters": list(args)}},
            "Publisher": {"Type": "s3managed"},
            "InputSources": [{"Target": "/app/probe.wasm", "Source": {"Type": "inline", "Params": {"URL": url}}}],
        }],
    }


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """One gateway and its agents under `root`; `close()` stops them all."""

    root: Path
    url: str = ""
    procs: list[Proc] = field(default_factory=list)
    http: httpx.Client | None = None

    def spawn(self, name: str, *args: str) -> Proc:
        log = self.root / f"{name}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen([sys.executable, "-m", "shoal", *args], stdout=handle,
                                     stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check(self, proc: Proc) -> None:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")

    def start_gateway(self) -> None:
        port = free_port()
        self.url = f"http://{HOST}:{port}"
        proc = self.spawn("gateway", "serve", "--host", HOST, "--port", str(port),
                          "--data-dir", str(self.root / "gateway"))
        self.http = http_client(self.url)

        def alive() -> bool:
            self.check(proc)
            try:
                return self.api.get("/api/v1/agent/alive").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(alive, timeout=60, what="the gateway to answer")

    def start_agents(self, count: int, slots: int) -> None:
        started = []
        for index in range(count):
            data_dir = self.root / f"agent-{index}"
            proc = self.spawn(f"agent-{index}", "agent", "--gateway", self.url, "--data-dir", str(data_dir),
                              "--max-executions", str(slots), "--name", f"bench-agent-{index}")
            started.append((proc, data_dir / "node.json"))

        def registered() -> bool:
            for proc, _ in started:
                self.check(proc)
            return all(node_json.exists() for _, node_json in started)

        wait_for(registered, timeout=60, what=f"{count} agent(s) to register")

    @property
    def api(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    def submit(self, client: httpx.Client, job: dict[str, Any]) -> str:
        response = client.put(JOBS, json={"Job": job})
        if response.status_code != 200:
            raise BenchError(f"submit answered {response.status_code}: {response.text[:500]}")
        return str(response.json()["JobID"])

    def list_jobs(self, namespace: str, state: str, limit: int) -> tuple[list[dict[str, Any]], str]:
        response = self.api.get(JOBS, params={"namespace": namespace, "state": state, "limit": limit})
        response.raise_for_status()
        body = response.json()
        return list(body["Items"]), str(body.get("NextToken") or "")

    def all_jobs(self, namespace: str, state: str) -> list[dict[str, Any]]:
        items, token = self.list_jobs(namespace, state, 1000)
        while token:
            response = self.api.get(JOBS, params={"namespace": namespace, "next_token": token})
            response.raise_for_status()
            items += response.json()["Items"]
            token = str(response.json().get("NextToken") or "")
        return items

    def active(self, namespace: str) -> bool:
        """Is any job of `namespace` not finished? States are asked in lifecycle order, so a job moving
        forward between two of the queries is still seen once."""
        return any(self.list_jobs(namespace, state, 1)[0] for state in ACTIVE)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.http is not None:
            self.http.close()


@contextmanager
def stack(root: Path, name: str, agents: int, slots: int) -> Iterator[Stack]:
    folder = root / name
    folder.mkdir()
    running = Stack(folder)
    try:
        running.start_gateway()
        running.start_agents(agents, slots)
        yield running
    except BaseException:
        for proc in running.procs:
            print(f"--- {proc.name} log (last lines) ---\n{proc.tail()}", file=sys.stderr)
        raise
    finally:
        running.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "min": min(values),
            "mean": statistics.fmean(values)}


# -- a. dispatch latency ------------------------------------------------------------------------------------


def one_latency_job(gw: Stack, namespace: str) -> dict[str, Any]:
    job = probe_job(namespace, "now")
    time.sleep(PACING_S)
    submitted = time.time_ns()
    job_id = gw.submit(gw.api, job)
    accepted = time.time_ns()

    def finished() -> dict[str, Any] | None:
        response = gw.api.get(f"{JOBS}/{job_id}", params={"include": "executions", "namespace": namespace})
        if response.status_code != 200:
            raise BenchError(f"GET job {job_id} answered {response.status_code}: {response.text[:500]}")
        body = response.json()
        return body if body["Job"]["State"]["StateType"] in TERMINAL else None

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
        "submit_to_start_ms": (started - submitted) / 1e6,
        "put_ms": (accepted - submitted) / 1e6,
        "put_returned_to_start_ms": (started - accepted) / 1e6,
        "start_to_completed_ms": (body["Job"]["ModifyTime"] - started) / 1e6,
        "submit_to_observed_done_ms": (observed - submitted) / 1e6,
    }


def bench_latency(root: Path, jobs: int) -> dict[str, Any]:
    namespace = f"bench-latency-{uuid.uuid4().hex[:8]}"
    with stack(root, "latency", agents=1, slots=1) as gw:
        warmup = [one_latency_job(gw, namespace) for _ in range(WARMUP_JOBS)]
        runs = []
        for index in range(jobs):
            runs.append(one_latency_job(gw, namespace))
            if (index + 1) % 50 == 0:
                print(f"  latency: {index + 1}/{jobs} jobs", file=sys.stderr)
    latencies = [r["submit_to_start_ms"] for r in runs]
    parts = {key: summary([r[key] for r in runs]) for key in runs[0] if key.endswith("_ms")}
    return {"jobs": jobs, "warmup_jobs": WARMUP_JOBS, "agents": 1, "max_executions": 1,
            "poll_interval_s": LATENCY_POLL_S, "pacing_s": PACING_S, "namespace": namespace,
            "submit_to_start_ms": summary(latencies), "latencies_ms": latencies, "breakdown_ms": parts,
            "runs": runs, "warmup": warmup}


# -- b. throughput ------------------------------------------------------------------------------------------


def submit_all(gw: Stack, namespace: str, jobs: int) -> tuple[list[int], list[str]]:
    """Submit `jobs` echo jobs from THREADS threads, one httpx client each; the submit times and errors."""
    job = probe_job(namespace, "echo", "x")
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def submit(_: int) -> tuple[int, str]:
        if not hasattr(local, "client"):
            local.client = http_client(gw.url)
            with lock:
                clients.append(local.client)
        before = time.time_ns()
        try:
            gw.submit(local.client, job)
        except (BenchError, httpx.HTTPError) as exc:
            return before, f"{type(exc).__name__}: {exc}"
        return before, ""

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(submit, range(jobs)))
    finally:
        for client in clients:
            client.close()
    return [t for t, _ in results], [e for _, e in results if e]


def bench_throughput(root: Path, agents: int, jobs: int) -> dict[str, Any]:
    namespace = f"bench-throughput-{agents}-{uuid.uuid4().hex[:8]}"
    with stack(root, f"throughput-{agents}", agents=agents, slots=SLOTS_PER_AGENT) as gw:
        # Warm the gateway up (first requests, imports); each agent still compiles the module on first use.
        gw.submit(gw.api, probe_job(namespace + "-warmup", "echo", "warm"))
        wait_for(lambda: not gw.active(namespace + "-warmup"), timeout=60, what="the warm-up job")
        began = time.monotonic()
        submit_times, errors = submit_all(gw, namespace, jobs)
        submitted = time.monotonic()
        deadline = max(300.0, jobs * 1.0)
        wait_for(lambda: not gw.active(namespace), timeout=deadline, interval=DONE_POLL_S,
                 what=f"{jobs} jobs to finish")
        observed = time.monotonic()
        finished = {state: gw.all_jobs(namespace, state) for state in TERMINAL}
    completed = finished["Completed"]
    first = min(submit_times)
    last_done = max((j["ModifyTime"] for j in completed), default=first)
    elapsed_s = (last_done - first) / 1e9
    return {
        "jobs": jobs, "agents": agents, "max_executions": SLOTS_PER_AGENT, "threads": THREADS,
        "namespace": namespace,
        "completed": len(completed), "failed": len(finished["Failed"]), "stopped": len(finished["Stopped"]),
        "submit_errors": errors[:20], "submit_error_count": len(errors),
        "submit_phase_s": submitted - began,
        "elapsed_s": elapsed_s,  # first submission → last job's ModifyTime (the gateway's clock, same host)
        "observed_elapsed_s": observed - began,  # first submission → the bench saw no active job
        "jobs_per_s": len(completed) / elapsed_s if elapsed_s > 0 else 0.0,
        "submit_jobs_per_s": jobs / (submitted - began),
        "failures": [{"ID": j["ID"], "State": j["State"]} for j in finished["Failed"] + finished["Stopped"]][:20],
    }


# -- report -------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import shoal

    url = os.environ.get("SHOAL_DATABASE_URL", "")
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "shoal": shoal.__version__,
        "database": url.split(":", 1)[0] if url else "sqlite (default, in the data dir)",
    }


def table(results: dict[str, Any]) -> str:
    rows = ["| benchmark | parameters | result |", "| --- | --- | --- |"]
    lat = results.get("latency")
    if lat:
        s = lat["submit_to_start_ms"]
        rows.append(
            f"| dispatch latency, submit → task start (idle agent) | {lat['jobs']} sequential `probe now` jobs, "
            f"1 agent, {lat['warmup_jobs']} warm-up jobs left out | p50 {s['p50']:.1f} ms, p90 {s['p90']:.1f} ms, "
            f"p99 {s['p99']:.1f} ms, max {s['max']:.1f} ms |")
        done = lat["breakdown_ms"]["submit_to_observed_done_ms"]
        every = lat["poll_interval_s"] * 1000
        rows.append(f"| job round trip, submit → seen Completed | same jobs (poll every {every:g} ms) |"
                    f" p50 {done['p50']:.1f} ms, p90 {done['p90']:.1f} ms, max {done['max']:.1f} ms |")
    for run in results.get("throughput", []):
        bad = run["failed"] + run["stopped"] + run["submit_error_count"]
        note = f"; **{bad} not completed**" if bad or run["completed"] != run["jobs"] else ""
        rows.append(
            f"| throughput, tiny WASM jobs end to end | {run['jobs']} `probe echo x` jobs, {run['agents']} agent(s)"
            f" x {run['max_executions']} slots, {run['threads']} submit threads | {run['jobs_per_s']:.1f} jobs/s "
            f"({run['completed']}/{run['jobs']} Completed in {run['elapsed_s']:.1f} s; submitting alone "
            f"{run['submit_jobs_per_s']:.0f} jobs/s){note} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs (30 latency, 100 throughput)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dispatch.json",
                        help="where to write the results (default bench/results/dispatch.json)")
    args = parser.parse_args()
    latency_jobs, throughput_jobs = (30, 100) if args.quick else (200, 500)

    began = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        root = Path(tmp)
        print(f"latency: {latency_jobs} jobs", file=sys.stderr)
        results["latency"] = bench_latency(root, latency_jobs)
        results["throughput"] = []
        for agents in (1, 4):
            print(f"throughput: {throughput_jobs} jobs, {agents} agent(s)", file=sys.stderr)
            results["throughput"].append(bench_throughput(root, agents, throughput_jobs))
    results["duration_s"] = time.monotonic() - began

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\n{results['machine']['cpu_count']} CPUs, Python {results['machine']['python']}, shoal "
          f"{results['machine']['shoal']}, {results['machine']['database']}; {results['duration_s']:.0f} s; "
          f"JSON: {args.json}")
    ok = all(r["completed"] == r["jobs"] for r in results["throughput"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
