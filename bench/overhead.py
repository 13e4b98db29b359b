"""Overhead benchmark: what Shoal adds to one Docker job and to one WASM job, against the same container started
with bare `docker run --rm` and the same module run bare with the wasmtime Python package.

    .venv/bin/python bench/overhead.py [--quick] [--runs N] [--json PATH]

Starts its own `shoal serve` and `shoal agent --max-executions 1` on 127.0.0.1 (SQLite, temp data dirs, the
caller's SHOAL_* settings dropped) and, for the bare WASM side, a long-lived worker process of its own (this file
with --bare-wasm-worker), so that neither Python's start-up nor its imports are timed. Runs `scripts/docker-up`
first when `docker info` fails or the test image is missing. Prints a markdown table, writes JSON (default
bench/results/overhead.json) and exits 1 when a job or a bare run did not complete.

Docker: wall time from just before `PUT /api/v1/orchestrator/jobs` until a `GET` of the job (every 5 ms) first
shows it Completed, and from the same moment to the job's ModifyTime (the gateway's clock on the same host: no
poll granularity), with the `noop` and, reported apart, the `s3managed` publisher; bare: the wall time of
`subprocess.run(["docker", "run", "--rm", "--network", "none", image, *command])` (the agent's containers have
no network either). WASM: the same two times for a `probe echo x` job whose module is sent inline as a `data:` URL
and, reported apart, one whose module was uploaded once through `POST /api/v1/uploads` and is referenced as a
`managed` input (the agent fetches it through a presigned GET every time); bare: see `bare_wasm_run`.

Every round runs each variant once, in an order that rotates from round to round, after warm-up rounds that are
left out; before each WASM job, `PACING_S` passes so that the agent is back in a waiting long-poll, as in
bench/dispatch.py (the Docker rounds are paced by the bare run of a second or so anyway).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import itertools
import json
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    IMAGE,
    JOBS,
    RESULTS,
    ROOT,
    TERMINAL,
    BenchError,
    CpuWatch,
    Stack,
    child_env,
    docker_versions,
    engine_cpu_s,
    ensure_docker,
    machine,
    stack,
    summary,
    wait_for,
    write_json,
)

COMMAND = ("echo", "hello")
DOCKER_RUN = ("docker", "run", "--rm", "--network", "none")
PROBE = ROOT / "tests" / "fixtures" / "wasm" / "probe.wasm"
PROBE_TARGET = "/app/probe.wasm"
PROBE_ARGS = ("echo", "x")
WORKER_FLAG = "--bare-wasm-worker"

POLL_S = 0.005  # how often a job is asked whether it is Completed
PACING_S = 0.05  # before each WASM job, so that the agent waits in a long-poll (the idle-agent case)
WARMUP_ROUNDS = 2
JOB_TIMEOUT_S = 120.0
DOCKER_GOAL_RATIO = 1.15  # Shoal p50 / bare p50, wall time
WASM_GOAL_ADDED_MS = 20.0  # Shoal p50 - bare p50, wall time
NA = "n/a"


class RunFailed(BenchError):
    """A job or a bare run that did not complete as expected: recorded, the benchmark goes on, exits 1."""


# -- Docker and wasmtime ------------------------------------------------------------------------------------


def wasmtime_version() -> str:
    return importlib.metadata.version("wasmtime")


# -- the bare WASM side: a long-lived worker process --------------------------------------------------------


def bare_wasm_run(module_path: Path, args: list[str], out_dir: Path, cache: dict[str, bytes]) -> dict[str, Any]:
    """One run as the agent's WasmExecutor does it (compute_agent/executors/wasm.py), minus Shoal's own
    plumbing. Timed: read the module and take its SHA-256 (the cache key), a fresh Engine with epoch interruption
    (the agent makes one per task), `Module.deserialize` of the code serialized at the first compile (that first
    run compiles with `Module(...)` and serializes: the agent caches compiled modules by digest the same way),
    a WASI config (argv; stdout and stderr to plain files), a Store with epoch deadline 1, a Linker with WASI,
    instantiate, and `_start` until it returns or exits. Not included, because they are the agent's: the FIFOs
    and copy threads for the output, the timeout watcher thread, the memory limit, preopens (none here)."""
    import wasmtime

    stdout, stderr = out_dir / "stdout", out_dir / "stderr"
    began = time.perf_counter_ns()
    data = module_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    compiled = cache.get(digest)
    if compiled is None:
        module = wasmtime.Module(engine, data)
        cache[digest] = bytes(module.serialize())
    else:
        module = wasmtime.Module.deserialize(engine, compiled)
    wasi = wasmtime.WasiConfig()
    wasi.argv = [module_path.name, *args]
    wasi.stdout_file, wasi.stderr_file = str(stdout), str(stderr)
    store = wasmtime.Store(engine)
    store.set_wasi(wasi)
    store.set_epoch_deadline(1)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, module)
    entry = instance.exports(store)["_start"]
    try:
        entry(store)  # type: ignore[operator]
        code = 0
    except wasmtime.ExitTrap as exc:
        code = int(exc.code)
    elapsed = time.perf_counter_ns() - began
    return {"ms": elapsed / 1e6, "exit_code": code, "stdout": stdout.read_text(), "compiled": compiled is None}


def wasm_worker() -> int:
    """Answer each line on stdin (a JSON `{"module", "args"}`) with one JSON line: a `bare_wasm_run`."""
    cache: dict[str, bytes] = {}
    out_dir = Path(tempfile.mkdtemp(prefix="shoal-bench-wasm-"))
    try:
        for line in sys.stdin:
            request = json.loads(line)
            print(json.dumps(bare_wasm_run(Path(request["module"]), request["args"], out_dir, cache)), flush=True)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


class BareWasm:
    """The worker process; `run()` asks it for one run and waits at most `timeout` seconds for the answer."""

    def __init__(self) -> None:
        self.popen = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), WORKER_FLAG],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
                                      cwd=ROOT)

    def run(self, module: Path, args: list[str], timeout: float = 60.0) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(json.dumps({"module": str(module), "args": args}) + "\n")
        self.popen.stdin.flush()
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        line = self.popen.stdout.readline() if ready else ""
        if not line:
            raise BenchError(f"the bare WASM worker did not answer (exit status {self.popen.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


# -- jobs ---------------------------------------------------------------------------------------------------


def docker_job(namespace: str, publisher: str) -> dict[str, Any]:
    """`echo hello` in the test image: the image's command replaced, as `docker run IMAGE echo hello` does."""
    engine = {"Type": "docker", "Params": {"Image": IMAGE, "Parameters": list(COMMAND)}}
    return {"Type": "batch", "Namespace": namespace, "Count": 1,
            "Tasks": [{"Name": "main", "Engine": engine, "Publisher": {"Type": publisher}}]}


def wasm_job(namespace: str, source: dict[str, Any]) -> dict[str, Any]:
    """`probe echo x`, the module from `source`, the `noop` publisher (the bare run publishes nothing)."""
    engine = {"Type": "wasm", "Params": {"EntryModule": PROBE_TARGET, "Parameters": list(PROBE_ARGS)}}
    return {"Type": "batch", "Namespace": namespace, "Count": 1,
            "Tasks": [{"Name": "main", "Engine": engine, "Publisher": {"Type": "noop"},
                       "InputSources": [{"Target": PROBE_TARGET, "Source": source}]}]}


def inline_source() -> dict[str, Any]:
    url = "data:application/octet-stream;base64," + base64.b64encode(PROBE.read_bytes()).decode()
    return {"Type": "inline", "Params": {"URL": url}}


def managed_source(gw: Stack, namespace: str) -> dict[str, Any]:
    """The probe module uploaded once through `POST /api/v1/uploads` and its presigned PUT; the `managed`
    source a job names it by."""
    data = PROBE.read_bytes()
    response = gw.api.post("/api/v1/uploads", json={"Name": PROBE.name, "Size": len(data), "Namespace": namespace,
                                                    "SHA256": hashlib.sha256(data).hexdigest()})
    if response.status_code != 201:
        raise BenchError(f"POST /api/v1/uploads answered {response.status_code}: {response.text[:500]}")
    target = response.json()
    put = gw.api.request(target["Method"], target["URL"], content=data, headers=target.get("Headers") or {})
    if put.is_error:
        raise BenchError(f"the module's upload answered {put.status_code}: {put.text[:500]}")
    source: dict[str, Any] = target["Source"]
    return source


def history_steps(events: list[dict[str, Any]], submitted_ns: int, seen_ns: int) -> dict[str, float]:
    """The time between the job's events in ms: submit → `Pending` (the job stored), then between consecutive
    states of the execution (BidAccepted: claimed by the agent's poll; Running: inputs fetched; Publishing: ran
    and archived; Completed), then Completed → the benchmark's GET that saw it."""
    marks: list[tuple[str, int]] = [("submit", submitted_ns)]
    for event in events:
        states = event["JobState"] if event["Type"] == "JobLevel" else event["ExecutionState"]
        if event["Type"] == "JobLevel" and states["New"] != "Pending":
            continue  # the job's Running and Completed coincide with its execution's events
        marks.append((states["New"], int(event["Time"])))
    marks.append(("seen", seen_ns))
    return {f"{a} → {b}": (tb - ta) / 1e6 for (a, ta), (b, tb) in itertools.pairwise(marks)}


def run_shoal_job(gw: Stack, job: dict[str, Any], expected_stdout: str) -> dict[str, Any]:
    """One job through replica 0: `wall_ms` from just before the PUT until a GET (every POLL_S) first shows it
    Completed, `modify_ms` from the same moment to its ModifyTime, and the steps between its history events."""
    namespace = job["Namespace"]
    submitted_ns, began = time.time_ns(), time.perf_counter_ns()
    job_id = gw.submit(gw.api, job)
    put_ms = (time.perf_counter_ns() - began) / 1e6

    def finished() -> dict[str, Any] | None:
        response = gw.api.get(f"{JOBS}/{job_id}", params={"namespace": namespace})
        if response.status_code != 200:
            raise BenchError(f"GET job {job_id} answered {response.status_code}: {response.text[:500]}")
        body: dict[str, Any] = response.json()
        return body if body["Job"]["State"]["StateType"] in TERMINAL else None

    wait_for(finished, timeout=JOB_TIMEOUT_S, interval=POLL_S, what=f"job {job_id}")
    wall_ms, seen_ns = (time.perf_counter_ns() - began) / 1e6, time.time_ns()
    response = gw.api.get(f"{JOBS}/{job_id}", params={"namespace": namespace, "include": "executions,history"})
    response.raise_for_status()
    body = response.json()
    executions = body["Executions"]["Items"]
    output = (executions[-1].get("RunOutput") or {}) if executions else {}
    state = body["Job"]["State"]
    if state["StateType"] != "Completed" or output.get("ExitCode") != 0 or output.get("Stdout") != expected_stdout:
        raise RunFailed(f"job {job_id} ended {state}: {json.dumps(executions)[:1000]}")
    return {"job_id": job_id, "wall_ms": wall_ms, "modify_ms": (body["Job"]["ModifyTime"] - submitted_ns) / 1e6,
            "put_ms": put_ms, "steps_ms": history_steps(body["History"]["Items"], submitted_ns, seen_ns)}


def run_bare_docker() -> dict[str, Any]:
    """`docker run --rm --network none IMAGE echo hello`, timed around `subprocess.run`."""
    began = time.perf_counter_ns()
    result = subprocess.run([*DOCKER_RUN, IMAGE, *COMMAND], capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    wall_ms = (time.perf_counter_ns() - began) / 1e6
    if result.returncode != 0 or result.stdout != "hello\n":
        raise RunFailed(f"docker run exited {result.returncode}: {result.stdout[:200]} {result.stderr[:500]}")
    return {"wall_ms": wall_ms}


def run_bare_wasm(worker: BareWasm) -> dict[str, Any]:
    result = worker.run(PROBE, list(PROBE_ARGS))
    if result["exit_code"] != 0 or result["stdout"] != "x\n":
        raise RunFailed(f"the bare WASM run ended {result['exit_code']}: {result['stdout'][:200]}")
    return {"wall_ms": result["ms"], "compiled": result["compiled"]}


# -- rounds -------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One column of runs: a Shoal job kind or a bare baseline."""

    name: str
    run: Callable[[], dict[str, Any]]
    pacing_s: float = 0.0
    warmup: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def step(self, measured: bool) -> None:
        if self.pacing_s:
            time.sleep(self.pacing_s)  # pacing only: the measured interval starts after it
        try:
            result = self.run()
        except RunFailed as exc:
            self.failures.append(str(exc))
            print(f"  {self.name}: {exc}", file=sys.stderr)
            return
        (self.runs if measured else self.warmup).append(result)

    def figures(self) -> dict[str, Any]:
        keys = [k for k in ("wall_ms", "modify_ms", "put_ms") if self.runs and k in self.runs[0]]
        out: dict[str, Any] = {"runs": len(self.runs), "failures": self.failures}
        for key in keys:
            values = [r[key] for r in self.runs]
            out[key] = {"samples": values, **spread(values)}
        steps = [r["steps_ms"] for r in self.runs if "steps_ms" in r]
        if steps:
            names = list(dict.fromkeys(name for s in steps for name in s))
            out["steps_ms_p50"] = {n: spread([s[n] for s in steps if n in s])["p50"] for n in names}
        out["raw"] = self.runs
        out["warmup"] = self.warmup
        return out


def spread(values: list[float]) -> dict[str, float]:
    """p50, p90 (nearest rank), min, max and mean, as harness.summary gives them."""
    if not values:
        return {}
    full = summary(values)
    return {k: full[k] for k in ("count", "p50", "p90", "min", "max", "mean")}


def interleave(variants: list[Variant], rounds: int, label: str) -> dict[str, Any]:
    """WARMUP_ROUNDS rounds left out, then `rounds` measured ones; each round runs every variant once, the order
    rotated by one each round. Returns the CPU accounting of the measured rounds (harness.CpuWatch), with the
    Docker engine's daemons taken out of "others" (the containers' own processes and shims still count there)."""
    for index in range(WARMUP_ROUNDS):
        for variant in variants[index % len(variants):] + variants[:index % len(variants)]:
            variant.step(measured=False)
    watch, engine = CpuWatch(), engine_cpu_s()
    for index in range(rounds):
        turn = index % len(variants)
        for variant in variants[turn:] + variants[:turn]:
            variant.step(measured=True)
        print(f"  {label}: {index + 1}/{rounds} rounds", file=sys.stderr)
    cpu = watch.stop()
    engine_cores = (engine_cpu_s() - engine) / cpu["wall_s"]
    cpu["docker_engine_cores"] = round(engine_cores, 2)
    cpu["other_cores_but_engine"] = round(max(0.0, cpu["other_cores"] - engine_cores), 2)
    return cpu


def compare(shoal: dict[str, Any], bare: dict[str, Any], measure: str, goal: str) -> dict[str, Any]:
    """A table row: Shoal's `measure` against the bare wall time; the goal judged on the medians."""
    if measure not in shoal or "wall_ms" not in bare:
        return {"measure": measure, "met": False, "ratio": None, "added_ms": None, "goal": goal}
    s, b = shoal[measure], bare["wall_ms"]
    ratio, added = s["p50"] / b["p50"], s["p50"] - b["p50"]
    met = ratio <= DOCKER_GOAL_RATIO if goal == "ratio" else added <= WASM_GOAL_ADDED_MS
    return {"measure": measure, "shoal_p50": s["p50"], "shoal_p90": s["p90"], "bare_p50": b["p50"],
            "bare_p90": b["p90"], "ratio": ratio, "added_ms": added, "goal": goal, "met": met,
            "runs": f"{shoal['runs']} / {bare['runs']}"}


# -- report -------------------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    def num(value: float | None, digits: int = 1) -> str:
        return NA if value is None else f"{value:.{digits}f}"

    measures = {"wall_ms": "submit → seen Completed", "modify_ms": "submit → ModifyTime"}
    goals = {"ratio": f"ratio ≤ {DOCKER_GOAL_RATIO:g}", "added": f"added ≤ {WASM_GOAL_ADDED_MS:g} ms"}
    lines = ["| job | Shoal measure | Shoal p50 (ms) | Shoal p90 (ms) | bare p50 (ms) | bare p90 (ms) "
             "| ratio of p50s | added at p50 (ms) | goal | met | runs (Shoal / bare) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {row['job']} | {measures[row['measure']]} | {num(row.get('shoal_p50'))} | {num(row.get('shoal_p90'))} "
            f"| {num(row.get('bare_p50'))} | {num(row.get('bare_p90'))} | {num(row.get('ratio'), 3)} "
            f"| {num(row.get('added_ms'))} | {goals[row['goal']]} | {'yes' if row['met'] else '**no**'} "
            f"| {row.get('runs', NA)} |")
    return "\n".join(lines)


def docker_section(gw: Stack, rounds: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    namespace = f"bench-overhead-docker-{uuid.uuid4().hex[:8]}"
    variants = [Variant("shoal-noop", lambda: run_shoal_job(gw, docker_job(namespace, "noop"), "hello\n")),
                Variant("bare", run_bare_docker),
                Variant("shoal-s3managed", lambda: run_shoal_job(gw, docker_job(namespace, "s3managed"), "hello\n"))]
    cpu = interleave(variants, rounds, "docker")
    figures = {v.name: v.figures() for v in variants}
    rows = [compare(figures[name], figures["bare"], measure, "ratio") | {"job": label}
            for name, label in (("shoal-noop", "Docker, `noop`"), ("shoal-s3managed", "Docker, `s3managed`"))
            for measure in ("wall_ms", "modify_ms")]
    return {"variants": figures, "cpu": cpu, "namespace": namespace}, rows


def wasm_section(gw: Stack, rounds: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    namespace = f"bench-overhead-wasm-{uuid.uuid4().hex[:8]}"
    inline, managed = inline_source(), managed_source(gw, namespace)
    worker = BareWasm()
    try:
        variants = [Variant("shoal-inline", lambda: run_shoal_job(gw, wasm_job(namespace, inline), "x\n"), PACING_S),
                    Variant("bare", lambda: run_bare_wasm(worker)),
                    Variant("shoal-managed", lambda: run_shoal_job(gw, wasm_job(namespace, managed), "x\n"),
                            PACING_S)]
        cpu = interleave(variants, rounds, "wasm")
    finally:
        worker.close()
    figures = {v.name: v.figures() for v in variants}
    rows = [compare(figures[name], figures["bare"], measure, "added") | {"job": label}
            for name, label in (("shoal-inline", "WASM, module inline"), ("shoal-managed", "WASM, module uploaded"))
            for measure in ("wall_ms", "modify_ms")]
    return {"variants": figures, "cpu": cpu, "namespace": namespace, "managed_key": managed["Params"]["Key"]}, rows


def print_steps(section: dict[str, Any], title: str) -> None:
    """Where a job's time goes: the p50 of each step between its history events (to stderr)."""
    for name, figures in section["variants"].items():
        steps = figures.get("steps_ms_p50")
        if steps:
            text = ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
            print(f"{title} {name}, steps p50 (ms): {text}", file=sys.stderr)


def main() -> int:
    if WORKER_FLAG in sys.argv[1:]:
        return wasm_worker()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 measured rounds instead of 20 (about 2 minutes)")
    parser.add_argument("--runs", type=int, help="measured rounds per part (default 20, quick 8)")
    parser.add_argument("--only", choices=("docker", "wasm"), help="measure one part only")
    parser.add_argument("--json", type=Path, default=RESULTS / "overhead.json",
                        help="where to write the results (default bench/results/overhead.json)")
    args = parser.parse_args()
    rounds = max(1, args.runs or (8 if args.quick else 20))

    began = time.monotonic()
    if args.only != "wasm":
        ensure_docker()
    results: dict[str, Any] = {
        "machine": machine() | {"database": "sqlite (default, in the data dir)"},
        "versions": {"docker": docker_versions() if args.only != "wasm" else None, "wasmtime": wasmtime_version()},
        "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parameters": {
            "rounds": rounds, "warmup_rounds": WARMUP_ROUNDS, "poll_s": POLL_S, "wasm_pacing_s": PACING_S,
            "agents": 1, "max_executions": 1, "image": IMAGE, "command": list(COMMAND),
            "bare_docker": [*DOCKER_RUN, IMAGE, *COMMAND], "docker_publishers": ["noop", "s3managed"],
            "wasm_module": str(PROBE.relative_to(ROOT)), "wasm_args": list(PROBE_ARGS), "wasm_publisher": "noop",
            "wasm_inputs": ["inline data: URL", "managed upload (POST /api/v1/uploads, once)"],
            "bare_wasm": bare_wasm_run.__doc__, "order": "rotating within each round",
            "goals": {"docker_wall_ratio_max": DOCKER_GOAL_RATIO, "wasm_added_ms_max": WASM_GOAL_ADDED_MS}},
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp, \
            stack(Path(tmp), "overhead", "", 1, agents=1, slots=1) as gw:
        if args.only != "wasm":
            print(f"docker: {rounds} rounds (+{WARMUP_ROUNDS} warm-up)", file=sys.stderr)
            results["docker"], docker_rows = docker_section(gw, rounds)
            rows += docker_rows
        if args.only != "docker":
            print(f"wasm: {rounds} rounds (+{WARMUP_ROUNDS} warm-up)", file=sys.stderr)
            results["wasm"], wasm_rows = wasm_section(gw, rounds)
            rows += wasm_rows
    results["table"] = rows
    results["duration_s"] = time.monotonic() - began
    write_json(args.json, results)

    for part in ("docker", "wasm"):
        if part in results:
            print_steps(results[part], part)
    print(table(rows))
    info = results["machine"]
    others = ", ".join(f"{p} {results[p]['cpu']['other_cores_but_engine']}" for p in ("docker", "wasm")
                       if p in results)
    docker = results["versions"]["docker"]
    engine = f"Docker {docker['server']} ({docker['storage_driver']}), " if docker else ""
    print(f"\n{info['cpu_count']} CPUs, Python {info['python']}, shoal {info['shoal']}, {engine}"
          f"wasmtime (Python) {results['versions']['wasmtime']}; {rounds} rounds; "
          f"others' CPU (cores, dockerd and containerd left out): {others}; "
          f"{results['duration_s']:.0f} s; JSON: {args.json}")
    failures = [f for p in ("docker", "wasm") if p in results for v in results[p]["variants"].values()
                for f in v["failures"]]
    if failures:
        print(f"{len(failures)} job(s) or bare run(s) did not complete: see the JSON", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
