"""What the scale benchmarks (idle_agents.py, queue_depth.py, partitions.py) share beyond harness.py: process
memory, CPU and file-descriptor readings from /proc, a node speaking the agent API over plain HTTP, job specs,
and the markdown report.

Everything here reads /proc or talks to a gateway on loopback; nothing starts or stops processes (harness.Stack
does that).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from dispatch import probe_job
from harness import TICK, BenchError, Stack, summary

COMPUTE = "/api/v1/compute"
NODES = "/api/v1/orchestrator/nodes"
FAR_FUTURE_S = 7 * 24 * 3600  # a QueueTimeout that never runs out during a benchmark


# -- /proc readings --------------------------------------------------------------------------------------------


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (at most the hard limit); processes it starts
    afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files_limit(pid: int) -> int:
    """The soft `Max open files` of a running process (/proc/<pid>/limits); -1 when unlimited."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return -1 if soft == "unlimited" else int(soft)
    raise BenchError(f"no 'Max open files' in /proc/{pid}/limits")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def vm_kib(pid: int, name: str = "VmRSS") -> int:
    """A `Vm…` line of /proc/<pid>/status in KiB (VmRSS: resident now; VmHWM: the most it ever was)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {name} in /proc/{pid}/status")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        after = stat.read().rsplit(")", 1)[1].split()
    return (int(after[11]) + int(after[12])) / TICK


def mib(kib: float) -> float:
    return kib / 1024


@dataclass
class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread, between `start()` and `stop()`."""

    pid: int
    interval: float = 0.25
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        began = time.monotonic()

        def run() -> None:
            while True:
                try:
                    self.samples.append((round(time.monotonic() - began, 3), vm_kib(self.pid)))
                except (OSError, BenchError):
                    return  # the process is gone
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=run, daemon=True, name=f"rss-{self.pid}")
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        values = [kib for _, kib in self.samples]
        return {"pid": self.pid, "interval_s": self.interval, "samples": len(values),
                "peak_mib": mib(max(values)) if values else None, "last_mib": mib(values[-1]) if values else None,
                "series_kib": self.samples}


def gateway_pid(gw: Stack, index: int = 0) -> int:
    """The pid of gateway replica `index` (`python -m shoal serve`, a direct child of the benchmark)."""
    procs = [p for p in gw.procs if p.name == f"gateway-{index}"]
    if not procs:
        raise BenchError(f"no gateway-{index} in this stack")
    return int(procs[0].popen.pid)


def wait_quiet(pid: int, *, cores: float, window: float, timeout: float) -> float:
    """Wait until the process used less than `cores` of CPU over `window` seconds (its backlog of work is done);
    returns the CPU it used in the last window, in cores. Raises BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        before, began = cpu_s(pid), time.monotonic()
        time.sleep(window)  # the measuring window itself, not a guess at when something is done
        used = (cpu_s(pid) - before) / (time.monotonic() - began)
        if used < cores:
            return used
        if time.monotonic() > deadline:
            raise BenchError(f"process {pid} still used {used:.2f} cores after {timeout:g}s")


# -- job specs -------------------------------------------------------------------------------------------------


def batch_job(namespace: str, count: int, *args: str, constraints: list[dict[str, Any]] | None = None,
              queue_timeout: int = 0) -> dict[str, Any]:
    """The probe WASM job of dispatch.py (module inline, `noop` publisher) with `Count` partitions, optional
    label constraints and a QueueTimeout (a job no connected node can run waits that long instead of failing)."""
    job = probe_job(namespace, *args)
    job["Count"] = count
    if constraints:
        job["Constraints"] = constraints
    if queue_timeout:
        job["Tasks"][0]["Timeouts"] = {"QueueTimeout": queue_timeout}
    return job


def docker_job(namespace: str, count: int, *, queue_timeout: int) -> dict[str, Any]:
    """A Docker batch job with `Count` partitions (never run in these benchmarks: no node offers docker)."""
    return {
        "Type": "batch",
        "Namespace": namespace,
        "Count": count,
        "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "docker", "Params": {"Image": "busybox:1.36", "Parameters": ["true"]}},
            "Publisher": {"Type": "noop"},
            "Timeouts": {"QueueTimeout": queue_timeout},
        }],
    }


# -- a node speaking the agent API over HTTP -------------------------------------------------------------------


def node_info(name: str, engines: list[str], labels: dict[str, str] | None = None, slots: int = 1) -> dict[str, Any]:
    """What a `shoal agent` sends at registration and with every poll (compute_agent/agent.py `_info`)."""
    return {
        "Name": name,
        "Labels": {"Architecture": "x86_64", "Operating-System": "linux"} | (labels or {}),
        "Engines": engines,
        "Publishers": ["s3managed", "noop"],
        "StorageSources": ["inline", "urlDownload", "s3", "localDirectory"],
        "Capacity": {"CPU": 1.6, "Memory": 8 << 30, "Disk": 8 << 30, "GPU": 0, "Slots": slots},
        "Version": "bench",
    }


def poll_body(info: dict[str, Any], free: int, wait: float, running: list[str] | None = None) -> dict[str, Any]:
    """A poll as GatewayClient.poll sends it: the node's info, its running executions, free slots, the wait."""
    return info | {"Running": running or [], "FreeSlots": free, "Wait": wait}


@dataclass
class HttpNode:
    """A compute node driven by the benchmark itself over the agent API (sync httpx): register, poll, complete."""

    client: httpx.Client
    info: dict[str, Any]
    node_id: str = ""
    credential: str = ""

    def register(self) -> HttpNode:
        response = self.client.post(COMPUTE + "/register", json=self.info)
        if response.status_code != 200:
            raise BenchError(f"register answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        self.node_id, self.credential = body["NodeID"], body["Credential"]
        return self

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}

    def poll(self, free: int, wait: float) -> tuple[int, list[dict[str, Any]]]:
        """One poll; its HTTP status and the assignments it brought."""
        response = self.client.post(COMPUTE + "/poll", json=poll_body(self.info, free, wait), headers=self.headers,
                                    timeout=wait + 60)
        if response.status_code == 204:
            return 204, []
        if response.status_code != 200:
            raise BenchError(f"poll answered {response.status_code}: {response.text[:300]}")
        return 200, list(response.json().get("Executions") or [])

    def complete(self, execution_id: str) -> None:
        """Report an assignment done (exit code 0, nothing published), as an agent whose task ran would."""
        response = self.client.post(f"{COMPUTE}/executions/{execution_id}/complete", headers=self.headers,
                                    json={"ExitCode": 0, "Stdout": "", "Stderr": "", "Published": False})
        if response.status_code != 200:
            raise BenchError(f"complete answered {response.status_code}: {response.text[:300]}")


def connected_nodes(client: httpx.Client) -> int:
    """How many nodes the gateway lists as CONNECTED."""
    response = client.get(NODES, params={"filter-status": "CONNECTED"})
    response.raise_for_status()
    return len(response.json()["Nodes"])


# -- report ----------------------------------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float] | None:
    """count, p50, p90, p99, max, min, mean (nearest rank); None for no values."""
    return summary(values) if values else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "**missed**"


def within(measured: float | None, baseline: float | None, factor: float) -> bool | None:
    """Whether `measured` is at most `factor` x `baseline` (None when either is missing)."""
    if measured is None or baseline is None:
        return None
    return measured <= factor * baseline


def md_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A markdown table; columns whose index is in `right` are right-aligned."""
    align = ["---:" if right and i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
