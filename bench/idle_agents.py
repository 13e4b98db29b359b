"""Idle-agents benchmark: one gateway process with N idle agents long-polling it (default 1000, `--quick` 200).

    .venv/bin/python bench/idle_agents.py [--quick] [--pollers N] [--jobs J] [--json PATH]

Goals: the gateway's RSS stays ≤ 300 MiB while N agents wait in long-polls, and dispatch latency p99 with N idle
pollers is within 2x of the figure with none.

One `shoal serve` (SQLite, defaults) and one real `shoal agent` (wasm, `--max-executions 1`) on 127.0.0.1, as
in dispatch.py. The idle agents are not N `shoal agent` processes (they would not fit on the machine) but ONE
helper process (this script re-invoked with `--poller-helper URL`) that speaks the agent API over HTTP with
asyncio + aiohttp, as the agent does: it registers N nodes (`POST /api/v1/compute/register`, open mode: no join
token), then keeps each in a long-poll (`POST /api/v1/compute/poll` with the node's info, `FreeSlots` 1, `Wait`
20 s) and polls again as soon as an answer comes. Its nodes offer only the
`docker` engine, so they can never take the benchmark's WASM jobs (whose submissions wake only WASM polls).

Phases, one gateway throughout: (1) dispatch latency with 0 idle pollers (the baseline); (2) the helper
registers and starts N pollers; the benchmark waits until N polls are outstanding, the gateway's CPU has settled
and the gateway lists N + 1 CONNECTED nodes; (3) one full poll period without submissions, to count the idle
polls and their CPU; (4) dispatch latency again with the N pollers waiting. Dispatch latency is dispatch.py's
own measurement (its `one_latency_job`: a `tick now` job, task clock - submit clock, 50 ms pacing, jobs one
after another). The gateway's VmRSS is sampled from /proc every 0.25 s from phase 2 on (and VmHWM read at the
end). The JSON has the raw latencies, the RSS series, the helper's poll counters and CPU accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from dispatch import WARMUP_JOBS, latency_figures, one_latency_job
from harness import RESULTS, BenchError, CpuWatch, Stack, child_env, machine, stack, wait_for, write_json
from scale import (
    COMPUTE,
    RssSampler,
    connected_nodes,
    cpu_s,
    fmt,
    gateway_pid,
    md_table,
    mib,
    node_info,
    open_fds,
    open_files_limit,
    poll_body,
    raise_nofile,
    verdict,
    vm_kib,
    wait_quiet,
    within,
)

from gateway.poll_deadlines import SPREAD as POLL_SPREAD

RSS_GOAL_MIB = 300.0
LATENCY_FACTOR = 2.0
POLL_WAIT_S = 20.0  # what a `shoal agent` asks for (and the gateway's default cap)
EARLY_MARGIN_S = 1.0  # a 204 sooner than this before the earliest end of its wait is an early return
FREE_SLOTS = 1
IDLE_ENGINES = ["docker"]  # the measured jobs are wasm: the idle nodes never match them
REGISTER_CONCURRENCY = 32
STATUS_EVERY_S = 0.5
REST_WINDOW_S = 10.0


# -- the helper process: N idle pollers -------------------------------------------------------------------------


@dataclass
class PollerStats:
    """The helper's counters, written to its status file as JSON."""

    count: int
    wait_s: float
    nofile: int = 0
    registered: int = 0
    register_errors: list[str] = field(default_factory=list)
    register_s: float = 0.0
    polling: bool = False
    polls_sent: int = 0
    outstanding: int = 0
    answers: dict[str, int] = field(default_factory=dict)  # HTTP status (or "error") → count
    early_204: int = 0
    early_204_s: list[float] = field(default_factory=list)  # durations of early 204s (first 1000)
    unexpected_work: int = 0
    errors: list[str] = field(default_factory=list)  # first 20
    sent_by_second: dict[str, int] = field(default_factory=dict)  # seconds since polling began → polls sent
    started_at: float = field(default_factory=time.time)
    polling_since: float = 0.0
    written_at: float = 0.0
    done: bool = False

    def sent(self) -> None:
        self.polls_sent += 1
        self.outstanding += 1
        second = str(int(time.time() - self.polling_since))
        self.sent_by_second[second] = self.sent_by_second.get(second, 0) + 1

    def answered(self, status: str, took: float) -> None:
        self.outstanding -= 1
        self.answers[status] = self.answers.get(status, 0) + 1
        if status == "204" and took < self.wait_s * (1 - POLL_SPREAD) - EARLY_MARGIN_S:
            self.early_204 += 1
            if len(self.early_204_s) < 1000:
                self.early_204_s.append(round(took, 3))

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


def write_status(path: Path, stats: PollerStats) -> None:
    """Atomically replace the status file."""
    stats.written_at = time.time()
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(stats)))
    os.replace(partial, path)


async def register_one(client: aiohttp.ClientSession, index: int, gate: asyncio.Semaphore,
                       stats: PollerStats) -> str | None:
    """Register idle node `index`; its credential (None when the gateway refused)."""
    async with gate:
        try:
            async with client.post(COMPUTE + "/register", json=node_info(f"idle-{index}", IDLE_ENGINES)) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.register_errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return None
    if status != 200:
        stats.register_errors.append(f"{status}: {text[:200]}")
        return None
    stats.registered += 1
    return str(json.loads(text)["Credential"])


async def keep_polling(client: aiohttp.ClientSession, index: int, credential: str, stats: PollerStats,
                       stopping: asyncio.Event) -> None:
    """One idle node's loop: long-poll, and poll again as soon as the answer comes (after an error, in 1 s)."""
    headers = {"Authorization": f"Bearer {credential}"}
    body = poll_body(node_info(f"idle-{index}", IDLE_ENGINES), FREE_SLOTS, stats.wait_s)
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        stats.sent()
        began = loop.time()
        try:
            async with client.post(COMPUTE + "/poll", json=body, headers=headers) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.answered("error", loop.time() - began)
            stats.error(f"{type(exc).__name__}: {exc}"[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
            continue
        stats.answered(str(status), loop.time() - began)
        if status == 200:
            await give_back(client, headers, json.loads(text), stats)
        elif status != 204:
            stats.error(f"poll {status}: {text[:200]}")


async def give_back(client: aiohttp.ClientSession, headers: dict[str, str], body: dict[str, Any],
                    stats: PollerStats) -> None:
    """An idle node should never get work; if it does, count it and hand it back (fail → rescheduled)."""
    for assignment in body.get("Executions") or []:
        stats.unexpected_work += 1
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with client.post(f"{COMPUTE}/executions/{assignment['ExecutionID']}/fail", headers=headers,
                                   json={"Message": "idle benchmark node"}) as response:
                await response.read()


async def report(path: Path, stats: PollerStats, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        write_status(path, stats)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), STATUS_EVERY_S)


async def run_pollers(gateway: str, count: int, wait: float, status: Path) -> None:
    """Register `count` nodes, keep each in a long-poll until SIGTERM, and report counters to `status`."""
    stats = PollerStats(count=count, wait_s=wait, nofile=raise_nofile(2 * count + 256))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # aiohttp, as the agent's GatewayClient: httpx's pool looks through all its connections for each request,
    # which with 1,000 of them took most of a core of the machine the gateway runs on
    connector = aiohttp.TCPConnector(limit=count + 64)
    timeout = aiohttp.ClientTimeout(total=wait + 30.0, connect=30.0)
    reporter = asyncio.create_task(report(status, stats, stopping))
    async with aiohttp.ClientSession(base_url=gateway, connector=connector, timeout=timeout) as client:
        gate = asyncio.Semaphore(REGISTER_CONCURRENCY)
        began = time.monotonic()
        credentials = await asyncio.gather(*(register_one(client, i, gate, stats) for i in range(count)))
        stats.register_s = time.monotonic() - began
        stats.polling, stats.polling_since = True, time.time()
        pollers = [asyncio.create_task(keep_polling(client, i, c, stats, stopping))
                   for i, c in enumerate(credentials) if c is not None]
        await stopping.wait()
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
    await reporter
    stats.done = True
    write_status(status, stats)


# -- the benchmark's side of the helper ---------------------------------------------------------------------------


@dataclass
class Pollers:
    """The helper process, started and stopped by the benchmark."""

    popen: subprocess.Popen[bytes]
    status_path: Path
    log: Path

    @classmethod
    def start(cls, url: str, count: int, root: Path) -> Pollers:
        status, log = root / "pollers.json", root / "pollers.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--poller-helper", url, "--pollers", str(count),
                 "--status", str(status)], stdout=handle, stderr=subprocess.STDOUT, env=child_env())
        return cls(popen, status, log)

    def status(self) -> dict[str, Any]:
        """The helper's latest counters ({} before its first report); raises if it died."""
        if self.popen.poll() is not None and not self.status_path.exists():
            raise BenchError(f"the poller helper exited with {self.popen.returncode}:\n{self.tail()}")
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then the final counters."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.status()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def counters_between(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The helper's poll counters between two of its status reports `seconds` apart: polls sent, answers by
    status, early 204s, the rate, and the most polls sent within one second (its per-second buckets)."""
    sent = after["polls_sent"] - before["polls_sent"]
    answers = {k: v - before["answers"].get(k, 0) for k, v in after["answers"].items()}
    first, last = latest_second(before), latest_second(after)
    per_second = [after["sent_by_second"].get(str(s), 0) for s in range(first, last + 1)]
    return {"window_s": round(seconds, 2), "polls_sent": sent, "polls_per_s": sent / seconds if seconds else 0.0,
            "peak_polls_in_one_s": max(per_second, default=0), "answers": {k: v for k, v in answers.items() if v},
            "early_204": after["early_204"] - before["early_204"],
            "unexpected_work": after["unexpected_work"] - before["unexpected_work"],
            "outstanding_at_end": after["outstanding"]}


def latest_second(status: dict[str, Any]) -> int:
    """The helper's second (since it began polling) when it wrote this status."""
    return int(float(status["written_at"]) - float(status["polling_since"]))


# -- phases -----------------------------------------------------------------------------------------------------


def latency_phase(gw: Stack, pid: int, namespace: str, jobs: int, label: str) -> dict[str, Any]:
    """`jobs` dispatch-latency jobs (dispatch.py's measurement) and the gateway's CPU per job."""
    watch, gateway_began = CpuWatch(), cpu_s(pid)
    runs = []
    for index in range(jobs):
        runs.append(one_latency_job(gw, namespace))
        if (index + 1) % 25 == 0:
            print(f"  {label}: {index + 1}/{jobs} jobs", file=sys.stderr)
    gateway_cpu = cpu_s(pid) - gateway_began
    return latency_figures(runs) | {"jobs": jobs, "runs": runs, "cpu": watch.stop(),
                                    "gateway_cpu_s": gateway_cpu, "gateway_cpu_ms_per_job": 1000 * gateway_cpu / jobs}


def wait_for_pollers(gw: Stack, pollers: Pollers, count: int, pid: int) -> dict[str, Any]:
    """Until every idle node is registered and has a poll outstanding, the gateway has worked off the first polls
    (its CPU below 0.15 cores over 1 s) and lists count + 1 CONNECTED nodes; how long each step took."""
    began = time.monotonic()

    def registered() -> bool:
        status = pollers.status()
        if status.get("register_errors"):
            raise BenchError(f"registration failed: {status['register_errors'][:3]}")
        return bool(status.get("polling"))

    wait_for(registered, timeout=120 + count * 0.5, what=f"{count} idle nodes to register", interval=0.2)
    registered_at = time.monotonic()
    wait_for(lambda: pollers.status().get("outstanding") == count, timeout=120 + count * 0.2,
             what=f"{count} outstanding polls", interval=0.1)
    outstanding_at = time.monotonic()
    settled_cores = wait_quiet(pid, cores=0.15, window=1.0, timeout=120 + count * 0.2)
    nodes = connected_nodes(gw.api)
    if nodes != count + 1:
        raise BenchError(f"the gateway lists {nodes} CONNECTED nodes, expected {count + 1}")
    status = pollers.status()
    if status["outstanding"] != count:
        raise BenchError(f"{status['outstanding']} polls outstanding after settling, expected {count}")
    return {"register_s": status["register_s"], "registrations_per_s": count / status["register_s"],
            "all_registered_s": registered_at - began, "all_outstanding_s": outstanding_at - registered_at,
            "settled_s": time.monotonic() - outstanding_at, "settled_gateway_cores": settled_cores,
            "connected_nodes": nodes, "helper_nofile": status["nofile"]}


def rest_window(pid: int, seconds: float) -> dict[str, float]:
    """The gateway's CPU over `seconds` with no submissions and no idle pollers (housekeeping, the measuring
    agent's own poll): what the idle window's CPU is compared with."""
    before, began = cpu_s(pid), time.monotonic()
    time.sleep(seconds)  # an observation window of fixed length, not a wait for an outcome
    elapsed = time.monotonic() - began
    return {"window_s": elapsed, "gateway_cpu_s": cpu_s(pid) - before, "gateway_cores": (cpu_s(pid) - before) / elapsed}


def idle_window(pollers: Pollers, pid: int, seconds: float, rest_cores: float) -> dict[str, Any]:
    """`seconds` (one poll period and a bit) without submissions: the idle polls and the gateway CPU they cost
    beyond its CPU at rest (`rest_cores`, measured without pollers)."""
    before, cpu_before, began = pollers.status(), cpu_s(pid), time.monotonic()
    time.sleep(seconds)  # an observation window of fixed length, not a wait for an outcome
    after, elapsed = pollers.status(), time.monotonic() - began
    used = cpu_s(pid) - cpu_before
    window = counters_between(before, after, elapsed)
    sent = window["polls_sent"]
    extra = max(0.0, used - rest_cores * elapsed)
    return window | {"gateway_cpu_s": used, "gateway_cores": used / elapsed, "gateway_rest_cores": rest_cores,
                     "gateway_cpu_ms_per_poll": 1000 * extra / sent if sent else None}


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """All phases on one gateway; the figures and raw samples."""
    count, jobs = args.pollers, args.jobs
    namespace = f"bench-idle-{uuid.uuid4().hex[:8]}"
    with stack(root, "idle", "", replicas=1, agents=1, slots=1) as gw:
        pid = gateway_pid(gw)
        limit = open_files_limit(pid)
        if 0 <= limit < count + 256:
            raise BenchError(f"the gateway may open only {limit} files; {count} pollers need {count + 256}")
        warmup = [one_latency_job(gw, namespace) for _ in range(WARMUP_JOBS)]
        rss_idle_kib = vm_kib(pid)
        print(f"baseline: {jobs} latency jobs, 0 idle pollers", file=sys.stderr)
        baseline = latency_phase(gw, pid, namespace, jobs, "baseline")
        rest = rest_window(pid, REST_WINDOW_S)
        rss_before_kib = vm_kib(pid)
        sampler = RssSampler(pid).start()
        print(f"starting {count} idle pollers", file=sys.stderr)
        pollers = Pollers.start(gw.urls[0], count, gw.root)
        try:
            startup = wait_for_pollers(gw, pollers, count, pid)
            rss_waiting_kib, fds_waiting = vm_kib(pid), open_fds(pid)
            print(f"idle window: {POLL_WAIT_S + 2:g} s", file=sys.stderr)
            idle = idle_window(pollers, pid, POLL_WAIT_S + 2, rest["gateway_cores"])
            print(f"with pollers: {jobs} latency jobs, {count} idle pollers", file=sys.stderr)
            before, began = pollers.status(), time.monotonic()
            loaded = latency_phase(gw, pid, namespace, jobs, f"{count} pollers")
            during = counters_between(before, pollers.status(), time.monotonic() - began)
            still = connected_nodes(gw.api)
        except BaseException:
            print(f"--- poller helper log (last lines) ---\n{pollers.tail()}", file=sys.stderr)
            raise
        finally:
            final = pollers.stop()
            rss = sampler.stop()
        hwm_kib = vm_kib(pid, "VmHWM")
    return {
        "namespace": namespace, "gateway_pid": pid, "gateway_nofile": limit, "warmup": warmup,
        "baseline": baseline, "rest_without_pollers": rest, "with_pollers": loaded, "startup": startup,
        "idle_window": idle,
        "polls_during_latency": during, "connected_nodes_after_latency": still, "helper_final": final,
        "rss": rss | {"idle_before_baseline_mib": mib(rss_idle_kib), "before_pollers_mib": mib(rss_before_kib),
                      "all_polls_waiting_mib": mib(rss_waiting_kib), "vm_hwm_mib": mib(hwm_kib),
                      "per_waiting_poll_kib": (rss_waiting_kib - rss_before_kib) / count,
                      "gateway_open_fds_waiting": fds_waiting},
    }


# -- report -----------------------------------------------------------------------------------------------------


def verdicts(m: dict[str, Any]) -> dict[str, Any]:
    base, loaded = m["baseline"]["submit_to_start_ms"], m["with_pollers"]["submit_to_start_ms"]
    peak = max(m["rss"]["peak_mib"] or 0.0, m["rss"]["vm_hwm_mib"])
    completed = m["helper_final"].get("unexpected_work", 0) == 0
    return {"rss_peak_mib": peak, "rss_goal_mib": RSS_GOAL_MIB, "rss_met": peak <= RSS_GOAL_MIB,
            "p99_baseline_ms": base["p99"], "p99_with_pollers_ms": loaded["p99"],
            "p99_ratio": loaded["p99"] / base["p99"], "latency_factor_goal": LATENCY_FACTOR,
            "latency_met": within(loaded["p99"], base["p99"], LATENCY_FACTOR), "idle_nodes_never_took_work": completed}


def table(m: dict[str, Any], v: dict[str, Any], count: int) -> str:
    base, loaded = m["baseline"], m["with_pollers"]
    b, w = base["submit_to_start_ms"], loaded["submit_to_start_ms"]
    idle, rss = m["idle_window"], m["rss"]
    rows = [
        ["dispatch p50 (ms)", fmt(b["p50"]), fmt(w["p50"]), "", ""],
        ["dispatch p90 (ms)", fmt(b["p90"]), fmt(w["p90"]), "", ""],
        ["dispatch p99 (ms)", fmt(b["p99"]), fmt(w["p99"]), f"≤ {LATENCY_FACTOR:g}x baseline "
         f"({fmt(LATENCY_FACTOR * b['p99'])})", f"{verdict(v['latency_met'])} ({v['p99_ratio']:.2f}x)"],
        ["dispatch max (ms)", fmt(b["max"]), fmt(w["max"]), "", ""],
        ["gateway RSS (MiB)", fmt(rss["before_pollers_mib"]), f"{fmt(rss['all_polls_waiting_mib'])} waiting, "
         f"peak {fmt(v['rss_peak_mib'])}", f"≤ {RSS_GOAL_MIB:g}", verdict(v["rss_met"])],
        ["gateway RSS per waiting poll (KiB)", "", fmt(rss["per_waiting_poll_kib"]), "", ""],
        ["gateway CPU per latency job (ms)", fmt(base["gateway_cpu_ms_per_job"]),
         fmt(loaded["gateway_cpu_ms_per_job"]), "", ""],
        ["idle polls/s (peak in 1 s)", "", f"{idle['polls_per_s']:.1f} ({idle['peak_polls_in_one_s']})", "", ""],
        ["gateway CPU per idle poll, beyond rest (ms)", "", fmt(idle["gateway_cpu_ms_per_poll"], 2), "", ""],
        ["early poll returns (idle window / latency phase)", "",
         f"{idle['early_204']} / {m['polls_during_latency']['early_204']}", "", ""],
        ["jobs measured", str(base["jobs"]), str(loaded["jobs"]), "", ""],
        ["others' CPU during the jobs (cores; > a few tenths: shared machine)", fmt(base["cpu"]["other_cores"], 2),
         fmt(loaded["cpu"]["other_cores"], 2), "", ""],
    ]
    return md_table(["figure", "0 idle pollers", f"{count} idle pollers", "goal", "result"], rows, {1, 2})


# -- main -------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 pollers, 30 latency jobs per phase")
    parser.add_argument("--pollers", type=int, help="idle pollers (default 1000, quick 200)")
    parser.add_argument("--jobs", type=int, help="latency jobs per phase (default 200, quick 30)")
    parser.add_argument("--json", type=Path, default=RESULTS / "idle_agents.json",
                        help="where to write the results (default bench/results/idle_agents.json)")
    parser.add_argument("--poller-helper", metavar="URL", help=argparse.SUPPRESS)  # the helper process's mode
    parser.add_argument("--status", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pollers = args.pollers or (200 if args.quick else 1000)
    args.jobs = args.jobs or (30 if args.quick else 200)
    if args.pollers < 1 or args.jobs < 1:
        parser.error("--pollers and --jobs must be positive")
    return args


def main() -> int:
    args = parse_args()
    if args.poller_helper:
        asyncio.run(run_pollers(args.poller_helper, args.pollers, POLL_WAIT_S, args.status))
        return 0
    nofile = raise_nofile(2 * args.pollers + 1024)  # the gateway inherits it
    began = time.monotonic()
    results: dict[str, Any] = {"machine": machine() | {"database": "sqlite (default, in the data dir)"},
                               "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["parameters"] = {"pollers": args.pollers, "latency_jobs_per_phase": args.jobs, "poll_wait_s": POLL_WAIT_S,
                             "idle_free_slots": FREE_SLOTS, "idle_engines": IDLE_ENGINES, "measured_engine": "wasm",
                             "measuring_agents": 1, "measuring_max_executions": 1, "early_margin_s": EARLY_MARGIN_S,
                             "bench_nofile": nofile, "gateway_settings": "defaults (SHOAL_* of the caller dropped)"}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-idle-") as tmp:
        measured = measure(args, Path(tmp))
    results |= measured
    results["verdicts"] = v = verdicts(measured)
    results["duration_s"] = time.monotonic() - began
    write_json(args.json, results)
    print(table(measured, v, args.pollers))
    info = results["machine"]
    print(f"\n{info['cpu_count']} CPUs, Python {info['python']}, shoal {info['shoal']}; one gateway (SQLite); "
          f"{args.pollers} idle pollers registered in {measured['startup']['register_s']:.1f} s; "
          f"{results['duration_s']:.0f} s; JSON: {args.json}")
    return 0 if v["idle_nodes_never_took_work"] else 1


if __name__ == "__main__":
    sys.exit(main())
