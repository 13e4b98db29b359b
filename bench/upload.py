"""Upload benchmark: a 1 GiB job result published by the agent through its presigned URL, against `curl -T` of
as many bytes to the same kind of URL; and how much memory the agent and the gateway take while it happens.

    .venv/bin/python bench/upload.py [--quick] [--size 1Gi] [--runs R] [--json PATH]

Starts its own `shoal serve` and `shoal agent --max-executions 1` on 127.0.0.1 (SQLite and the gateway's local
object store in temp data dirs, the caller's SHOAL_* settings dropped); runs `scripts/docker-up` first when
`docker info` fails or the test image is missing. Refuses to start when the temp dir has less than 4x the size
free. Prints a markdown table, writes JSON (default bench/results/upload.json), exits 1 when a job or an upload
did not complete.

Shoal: a Docker job `head -c SIZE /dev/urandom > /outputs/data; cat /proc/uptime` with ResultPath /outputs and
the `s3managed` publisher. The agent archives its results dir as tar.gz (gzip level 6: random data does not
shrink), takes the archive's SHA-256, asks `POST /api/v1/compute/executions/{id}/publish` for a presigned PUT
(the gateway records the execution Publishing at that moment), streams the archive to it, and calls
`/complete`. The publish time is taken from the execution's history events (gateway clock, ns):
Publishing → Completed, over the archive's size (the Publishing event's `Size`, checked against the results
listing) → MB/s (10^6 bytes/s). Also reported: Publishing → the moment the object store wrote the object's
`.sha256` sidecar (its mtime: the upload alone, without `/complete`), and the task's end (`/proc/uptime`
printed by the task, 10 ms resolution, mapped to the wall clock through CLOCK_BOOTTIME) → Publishing: the
container's removal, the last log shipment, archiving, hashing and the `/publish` call.

curl: a file of SIZE bytes from /dev/urandom, a presigned PUT for it from `POST /api/v1/uploads` (open mode on
loopback: no credentials), `curl -T file -X PUT <url>` with the headers the gateway returned; throughput from
curl's own `time_total`, the wall time around the process kept too. Just before, two copies of the file are
written (and removed after), as a Shoal job writes its result file and its archive just before its upload: both
then upload while the kernel writes back as much fresh data, which slows every write to the store (on this
machine about 700 → 280 MB/s with 2 GiB freshly written, for curl and for the agent alike).

Memory: while each Shoal job runs (and each curl upload), VmRSS of the agent and of the gateway process (the
`python -m shoal ...` processes: `/proc/<pid>/status`) and of any child process of theirs, every 50 ms; the
reading just before the submission is the baseline, growth = peak - baseline.

Runs alternate (Shoal, curl; curl, Shoal; ...); a small job first warms the agent up (imports, Docker client).
The object store's copies are deleted after each run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from harness import (
    IMAGE,
    JOBS,
    RESULTS,
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

from shoal.resources import parse_bytes

OBJECTS_PATH = "/api/v1/objects/"
SAMPLE_S = 0.05
WARMUP_BYTES = 1 << 20
GOAL_RATIO = 0.9  # Shoal's MB/s over curl's
GOAL_GROWTH_MIB = 64.0
DISK_FACTOR = 4  # the task's file, the agent's archive, the stored object, the curl payload
MIB = 1 << 20


class RunFailed(BenchError):
    """A job or an upload that did not complete: recorded, the benchmark goes on and exits 1."""


# -- memory -------------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's list)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


class RssSampler:
    """VmRSS of each named process, and the sum over its children, every SAMPLE_S in a thread, between
    `start()` and `stop()`. Samples: (seconds since start, {name: KiB, name + "_children": KiB})."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.child_names: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._began = time.monotonic()

    def reading(self) -> dict[str, int]:
        values: dict[str, int] = {}
        for name, pid in self.pids.items():
            kids = children(pid)
            values[name] = rss_kib(pid)
            values[name + "_children"] = sum(rss_kib(kid) for kid in kids)
            for kid in kids:
                with contextlib.suppress(OSError):
                    self.child_names.add(f"{name}: {Path(f'/proc/{kid}/comm').read_text().strip()}")
        return values

    def sample(self) -> dict[str, int]:
        values = self.reading()
        self.samples.append((round(time.monotonic() - self._began, 3), values))
        return values

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def start(self) -> dict[str, int]:
        """Start sampling; the first reading (the baseline)."""
        first = self.sample()
        self._thread.start()
        return first

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def figures(self, baseline: dict[str, int]) -> dict[str, Any]:
        """Per process: baseline, peak and growth in MiB (the process plus its children), and the samples."""
        out: dict[str, Any] = {}
        for name in self.pids:
            def total(values: dict[str, int], name: str = name) -> int:
                return values[name] + values[name + "_children"]

            peak = max(total(values) for _, values in self.samples)
            out[name] = {"baseline_mib": total(baseline) / 1024, "peak_mib": peak / 1024,
                         "growth_mib": (peak - total(baseline)) / 1024,
                         "children_peak_mib": max(v[name + "_children"] for _, v in self.samples) / 1024}
        out["children_seen"] = sorted(self.child_names)
        out["samples_kib"] = [[t, *(v[n] + v[n + "_children"] for n in self.pids)] for t, v in self.samples]
        out["samples_columns"] = ["seconds", *self.pids]
        return out


# -- the Shoal side -----------------------------------------------------------------------------------------


def result_job(namespace: str, size: int) -> dict[str, Any]:
    """A Docker job whose result is `size` bytes of random data in /outputs/data; it prints /proc/uptime when
    the file is written (its end, as the kernel's boot-time clock)."""
    script = f"head -c {size} /dev/urandom > /outputs/data && cat /proc/uptime"
    engine = {"Type": "docker", "Params": {"Image": IMAGE, "Entrypoint": ["/bin/sh", "-c"], "Parameters": [script]}}
    return {"Type": "batch", "Namespace": namespace, "Count": 1, "Tasks": [{
        "Name": "main", "Engine": engine, "Publisher": {"Type": "s3managed"},
        "ResultPaths": [{"Name": "outputs", "Path": "/outputs"}],
        "Resources": {"CPU": "1", "Memory": "1Gb"}, "Timeouts": {"ExecutionTimeout": 3600}}]}


def boottime_to_wall_ns(uptime_s: float) -> int:
    """A CLOCK_BOOTTIME reading (/proc/uptime) as a time.time_ns() one."""
    offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return int(uptime_s * 1e9) + offset


def key_of(url: str) -> str:
    """The object key in a presigned URL of the gateway's local object store."""
    path = unquote(urlparse(url).path)
    if not path.startswith(OBJECTS_PATH):
        raise BenchError(f"not a local object store URL: {url}")
    return path[len(OBJECTS_PATH):]


def remove_object(store: Path, key: str) -> int | None:
    """Delete an object and its `.sha256` sidecar; returns the sidecar's mtime (ns since the epoch, as fine as the
    file system's clock ticks), the moment the store had received, checked and renamed the whole object."""
    path = store / key
    sidecar = path.with_name(path.name + ".sha256")
    stored = sidecar.stat().st_mtime_ns if sidecar.exists() else None
    path.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    return stored


def follow_job(gw: Stack, job_id: str, namespace: str, timeout: float) -> dict[str, Any]:
    """Wait (GET every SAMPLE_S) until the job is finished; the job with its executions and history."""

    def finished() -> bool:
        response = gw.api.get(f"{JOBS}/{job_id}", params={"namespace": namespace})
        response.raise_for_status()
        return response.json()["Job"]["State"]["StateType"] in TERMINAL

    wait_for(finished, timeout=timeout, interval=SAMPLE_S, what=f"job {job_id}")
    response = gw.api.get(f"{JOBS}/{job_id}", params={"namespace": namespace, "include": "executions,history"})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    executions = body["Executions"]["Items"]
    output = (executions[-1].get("RunOutput") or {}) if executions else {}
    if body["Job"]["State"]["StateType"] != "Completed" or output.get("ExitCode") != 0:
        raise RunFailed(f"job {job_id} ended {body['Job']['State']}: {str(executions)[:1000]}")
    return body


def execution_events(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The (one) execution's history events by the state they entered."""
    return {e["ExecutionState"]["New"]: e for e in body["History"]["Items"] if e["Type"] == "ExecutionLevel"}


def published(gw: Stack, job_id: str, namespace: str) -> dict[str, Any]:
    response = gw.api.get(f"{JOBS}/{job_id}/results", params={"namespace": namespace})
    response.raise_for_status()
    items = response.json()["Items"]
    if len(items) != 1:
        raise RunFailed(f"job {job_id} lists {len(items)} results, not 1")
    params: dict[str, Any] = items[0]["Params"]
    return params


def shoal_run(gw: Stack, pids: dict[str, int], namespace: str, size: int, store: Path) -> dict[str, Any]:
    """One job; its phases from its history (see the module's description), the RSS of agent and gateway."""
    sampler = RssSampler(pids)
    baseline = sampler.start()
    submitted = time.time_ns()
    try:
        job_id = gw.submit(gw.api, result_job(namespace, size))
        body = follow_job(gw, job_id, namespace, timeout=300 + size / 1e6)
    finally:
        sampler.stop()
    events = execution_events(body)
    publishing, completed = events["Publishing"], events["Completed"]
    result = published(gw, job_id, namespace)
    archive = int(publishing["Event"]["Details"]["Size"])
    if archive != result["Size"] or publishing["Event"]["Details"]["SHA256"] != result["SHA256"]:
        raise RunFailed(f"job {job_id}: the results listing does not match the Publishing event")
    stored = remove_object(store, key_of(result["PreSignedURL"]))
    stdout = body["Executions"]["Items"][-1]["RunOutput"]["Stdout"]
    task_end = boottime_to_wall_ns(float(stdout.split()[0]))
    t_publishing, t_completed = publishing["Time"], completed["Time"]
    publish_s = (t_completed - t_publishing) / 1e9
    upload_s = (stored - t_publishing) / 1e9 if stored is not None else None
    return {
        "job_id": job_id, "archive_bytes": archive, "sha256": result["SHA256"],
        "publishing_to_completed_s": publish_s,
        "publishing_to_stored_s": upload_s,
        "stored_to_completed_s": (t_completed - stored) / 1e9 if stored is not None else None,
        "task_end_to_publishing_s": (t_publishing - task_end) / 1e9,
        "task_end_to_completed_s": (t_completed - task_end) / 1e9,
        "running_to_task_end_s": (task_end - events["Running"]["Time"]) / 1e9,
        "submit_to_completed_s": (t_completed - submitted) / 1e9,
        "mb_per_s": archive / publish_s / 1e6,
        "upload_only_mb_per_s": archive / upload_s / 1e6 if upload_s else None,
        "with_archiving_mb_per_s": archive / ((t_completed - task_end) / 1e9) / 1e6,
        "memory": sampler.figures(baseline),
    }


# -- the curl side ------------------------------------------------------------------------------------------


def make_payload(path: Path, size: int) -> str:
    """`size` bytes from /dev/urandom into `path`; their SHA-256."""
    digest = hashlib.sha256()
    with open("/dev/urandom", "rb") as source, open(path, "wb") as out:
        left = size
        while left:
            chunk = source.read(min(MIB, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def curl_run(gw: Stack, pids: dict[str, int], namespace: str, payload: Path, sha256: str,
             store: Path) -> dict[str, Any]:
    """A presigned PUT from POST /api/v1/uploads, then `curl -T payload` to it with the headers it names, right
    after writing as much as a Shoal job writes before its upload (its result file and its archive)."""
    size = payload.stat().st_size
    like_a_job = [payload.with_name(f"{payload.name}.{name}") for name in ("result", "archive")]
    for path in like_a_job:
        shutil.copyfile(payload, path)
    response = gw.api.post("/api/v1/uploads", json={"Name": "payload.bin", "Size": size, "SHA256": sha256,
                                                    "Namespace": namespace})
    if response.status_code != 201:
        raise BenchError(f"POST /api/v1/uploads answered {response.status_code}: {response.text[:500]}")
    target = response.json()
    headers = [arg for k, v in (target.get("Headers") or {}).items() for arg in ("-H", f"{k}: {v}")]
    command = ["curl", "--silent", "--show-error", "--noproxy", "*", "-T", str(payload), "-X", target["Method"],
               *headers, "-o", "/dev/null", "-w", "%{http_code} %{size_upload} %{time_total}", target["URL"]]
    sampler = RssSampler({"gateway": pids["gateway"]})
    baseline = sampler.start()
    began = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300 + size / 1e6)
    finally:
        wall_s = time.perf_counter() - began
        sampler.stop()
        for path in like_a_job:
            path.unlink(missing_ok=True)
    stored = remove_object(store, target["Key"])
    code, uploaded, total = [*result.stdout.split(), "", "", ""][:3]
    if result.returncode != 0 or code != "200" or int(uploaded or 0) != size or stored is None:
        raise RunFailed(f"curl exited {result.returncode}, HTTP {code}, {uploaded} bytes: {result.stderr[:500]}")
    return {"bytes": size, "time_total_s": float(total), "wall_s": wall_s, "mb_per_s": size / float(total) / 1e6,
            "wall_mb_per_s": size / wall_s / 1e6, "memory": sampler.figures(baseline)}


# -- runs and report ----------------------------------------------------------------------------------------


@dataclass
class Runs:
    name: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def attempt(self, run: Any) -> None:
        try:
            self.runs.append(run())
        except RunFailed as exc:
            self.failures.append(str(exc))
            print(f"  {self.name}: {exc}", file=sys.stderr)

    def spread(self, key: str) -> dict[str, Any] | None:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        if not values:
            return None
        full = summary(values)
        return {"samples": values, **{k: full[k] for k in ("count", "p50", "p90", "min", "max", "mean")}}

    def memory(self, process: str) -> dict[str, Any] | None:
        """The run whose `process` grew most: its baseline, peak and growth (MiB)."""
        entries = [r["memory"][process] for r in self.runs]
        return max(entries, key=lambda m: m["growth_mib"]) if entries else None


def figures(shoal: Runs, curl: Runs) -> dict[str, Any]:
    keys = ("mb_per_s", "upload_only_mb_per_s", "with_archiving_mb_per_s", "publishing_to_completed_s",
            "publishing_to_stored_s", "stored_to_completed_s", "task_end_to_publishing_s", "task_end_to_completed_s",
            "running_to_task_end_s", "submit_to_completed_s", "archive_bytes")
    out: dict[str, Any] = {"shoal": {k: shoal.spread(k) for k in keys},
                           "curl": {k: curl.spread(k) for k in ("mb_per_s", "wall_mb_per_s", "time_total_s",
                                                                "wall_s")}}
    s, c = out["shoal"]["mb_per_s"], out["curl"]["mb_per_s"]
    ratio = s["p50"] / c["p50"] if s and c else None
    agent, gateway, curl_gateway = shoal.memory("agent"), shoal.memory("gateway"), curl.memory("gateway")
    out["goals"] = {
        "throughput_ratio": ratio, "throughput_met": ratio is not None and ratio >= GOAL_RATIO,
        "agent_growth_mib": agent["growth_mib"] if agent else None,
        "gateway_growth_mib": gateway["growth_mib"] if gateway else None,
        "gateway_growth_under_curl_mib": curl_gateway["growth_mib"] if curl_gateway else None,
        "memory_met": bool(agent and gateway) and max(agent["growth_mib"], gateway["growth_mib"]) < GOAL_GROWTH_MIB}
    out["memory_worst_run"] = {"agent": agent, "gateway": gateway, "gateway_under_curl": curl_gateway}
    return out


def table(result: dict[str, Any]) -> str:
    def num(entry: dict[str, Any] | None, digits: int = 1) -> str:
        return "n/a" if not entry else f"{entry['p50']:.{digits}f}"

    def mem(entry: dict[str, Any] | None) -> str:
        if not entry:
            return "n/a"
        return f"{entry['baseline_mib']:.0f} → {entry['peak_mib']:.0f} (+{entry['growth_mib']:.1f})"

    s, c, g, worst = result["shoal"], result["curl"], result["goals"], result["memory_worst_run"]
    ratio = "n/a" if g["throughput_ratio"] is None else f"{g['throughput_ratio']:.2f}"
    alone = s["upload_only_mb_per_s"]
    alone_ratio = f"{alone['p50'] / c['mb_per_s']['p50']:.2f}" if alone and c["mb_per_s"] else "n/a"
    met = {True: "yes", False: "**no**"}
    agent_ok = g["agent_growth_mib"] is not None and g["agent_growth_mib"] < GOAL_GROWTH_MIB
    gateway_ok = g["gateway_growth_mib"] is not None and g["gateway_growth_mib"] < GOAL_GROWTH_MIB
    return "\n".join([
        "| figure | Shoal | curl -T | Shoal / curl | goal | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| upload, MB/s (p50): Publishing → Completed / curl time_total | {num(s['mb_per_s'])} "
        f"| {num(c['mb_per_s'])} | {ratio} | ≥ {GOAL_RATIO:g} x curl | {met[g['throughput_met']]} |",
        f"| upload alone, MB/s (p50): Publishing → object stored / curl time_total | "
        f"{num(alone)} | {num(c['mb_per_s'])} | {alone_ratio} | | |",
        f"| whole publishing phase with archiving, MB/s (p50): task end → Completed | "
        f"{num(s['with_archiving_mb_per_s'])} | | | | |",
        f"| container exit → Publishing, s (p50): remove container, ship logs, tar.gz, SHA-256, /publish | "
        f"{num(s['task_end_to_publishing_s'], 2)} | | | | |",
        f"| agent RSS, MiB: baseline → peak (growth), worst run | {mem(worst['agent'])} | | "
        f"| growth < {GOAL_GROWTH_MIB:g} MiB | {met[agent_ok]} |",
        f"| gateway RSS, MiB: baseline → peak (growth), worst run | {mem(worst['gateway'])} "
        f"| {mem(worst['gateway_under_curl'])} | | growth < {GOAL_GROWTH_MIB:g} MiB | {met[gateway_ok]} |",
    ])


def check_disk(root: Path, size: int) -> None:
    free = shutil.disk_usage(root).free
    if free < DISK_FACTOR * size:
        raise SystemExit(f"upload.py: {root} has {free / MIB:.0f} MiB free, {DISK_FACTOR}x the size "
                         f"({DISK_FACTOR * size / MIB:.0f} MiB) is needed: use a smaller --size")


def warm_up(gw: Stack, namespace: str, store: Path) -> None:
    """A small publishing job first: the agent's imports, its Docker client, the gateway's first requests."""
    job_id = gw.submit(gw.api, result_job(namespace, WARMUP_BYTES))
    follow_job(gw, job_id, namespace, timeout=300)
    remove_object(store, key_of(published(gw, job_id, namespace)["PreSignedURL"]))


def measure(root: Path, size: int, rounds: int) -> tuple[Runs, Runs, dict[str, Any]]:
    """The stack, the warm-up, then `rounds` rounds of a Shoal job and a curl upload, in alternating order."""
    namespace = f"bench-upload-{uuid.uuid4().hex[:8]}"
    shoal, curl = Runs("shoal"), Runs("curl")
    with stack(root, "upload", "", 1, agents=1, slots=1) as gw:
        pids = {p.name.split("-")[0]: p.popen.pid for p in gw.procs}  # gateway-0 and agent-0
        store = root / "upload" / "gateway-0" / "objects"
        warm_up(gw, namespace, store)
        payload = root / "payload.bin"
        sha256 = make_payload(payload, size)
        watch, engine = CpuWatch(), engine_cpu_s()
        for index in range(rounds):
            steps = [(shoal, lambda: shoal_run(gw, pids, namespace, size, store)),
                     (curl, lambda: curl_run(gw, pids, namespace, payload, sha256, store))]
            for runs, run in steps if index % 2 == 0 else steps[::-1]:
                runs.attempt(run)
            print(f"  {index + 1}/{rounds} rounds", file=sys.stderr)
        cpu = watch.stop()
        cpu["docker_engine_cores"] = round((engine_cpu_s() - engine) / cpu["wall_s"], 2)
        cpu["other_cores_but_engine"] = round(max(0.0, cpu["other_cores"] - cpu["docker_engine_cores"]), 2)
        payload.unlink()
    return shoal, curl, cpu


def curl_version() -> str:
    return subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB and 2 rounds (about 2 minutes)")
    parser.add_argument("--size", type=parse_bytes, help="result size, e.g. 1Gi, 256Mi (default 1Gi, quick 256Mi)")
    parser.add_argument("--runs", type=int, help="rounds of Shoal and curl (default 3, quick 2)")
    parser.add_argument("--json", type=Path, default=RESULTS / "upload.json",
                        help="where to write the results (default bench/results/upload.json)")
    args = parser.parse_args()
    size = args.size or (256 * MIB if args.quick else 1024 * MIB)
    rounds = max(1, args.runs or (2 if args.quick else 3))
    began = time.monotonic()
    ensure_docker()
    results: dict[str, Any] = {
        "machine": machine() | {"database": "sqlite (default, in the data dir)"},
        "versions": {"docker": docker_versions(), "curl": curl_version()},
        "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parameters": {"size_bytes": size, "rounds": rounds, "sample_s": SAMPLE_S, "image": IMAGE,
                       "job": result_job("<namespace>", size), "publisher": "s3managed",
                       "object_store": "the gateway's local store (data dir)", "warmup_bytes": WARMUP_BYTES,
                       "goals": {"throughput_ratio_min": GOAL_RATIO, "rss_growth_mib_max": GOAL_GROWTH_MIB}},
    }
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        check_disk(Path(tmp), size)
        print(f"upload: {size / MIB:.0f} MiB, {rounds} rounds", file=sys.stderr)
        shoal, curl, cpu = measure(Path(tmp), size, rounds)
    results |= figures(shoal, curl)
    results["cpu"] = cpu
    results["raw"] = {"shoal": shoal.runs, "curl": curl.runs}
    results["failures"] = {"shoal": shoal.failures, "curl": curl.failures}
    results["duration_s"] = time.monotonic() - began
    write_json(args.json, results)

    print(table(results))
    info = results["machine"]
    archive = results["shoal"]["archive_bytes"]
    print(f"\n{size / MIB:.0f} MiB of random data ({archive['p50'] if archive else 'n/a'} bytes as tar.gz); "
          f"{rounds} rounds; {info['cpu_count']} CPUs, Python {info['python']}, shoal {info['shoal']}, "
          f"{results['versions']['curl'].split(' (')[0]}; others' CPU {cpu['other_cores_but_engine']} cores "
          f"(dockerd and containerd left out); {results['duration_s']:.0f} s; JSON: {args.json}")
    failed = len(shoal.failures) + len(curl.failures)
    if failed:
        print(f"{failed} run(s) did not complete: see the JSON", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
