"""What every benchmark shares: Shoal's processes on loopback, a throwaway PostgreSQL, CPU accounting, statistics.

Benchmarks start their own `python -m shoal serve` and `python -m shoal agent` processes on 127.0.0.1 (free
ports, temp data dirs) with the caller's SHOAL_* settings dropped, and stop them whatever happens.
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
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
JOBS = "/api/v1/orchestrator/jobs"
HOST = "127.0.0.1"
TERMINAL = ("Completed", "Failed", "Stopped")
ACTIVE = ("Pending", "Queued", "Running")  # in lifecycle order: see Stack.active()

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Everything else is PostgreSQL's default (fsync, synchronous_commit, full_page_writes, shared_buffers, ...):
# the commits are as durable as in a default installation. Three replicas hold up to 3 x (10 + 20) pooled
# connections plus their LISTEN connections, more than the default 100.
PG_SETTINGS = {"listen_addresses": HOST, "max_connections": "300"}
PG_REPORTED = ("server_version", "max_connections", "shared_buffers", "fsync", "synchronous_commit",
               "full_page_writes", "wal_level", "wal_buffers", "checkpoint_timeout", "max_wal_size")


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


def child_env(database_url: str = "") -> dict[str, str]:
    """The environment without the caller's SHOAL_* settings, with `database_url` (SQLite in the data dir when
    empty) and with loopback exempt from proxies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    if database_url:
        env["SHOAL_DATABASE_URL"] = database_url
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def csv_subset(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated subset of `allowed` (case does not matter)."""
    def parse(text: str) -> list[str]:
        values = [part.strip().lower() for part in text.split(",") if part.strip()]
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated subset of {','.join(allowed)} expected")
        return values

    return parse


def http_client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=60, trust_env=False)

# -- Docker -------------------------------------------------------------------------------------------------

IMAGE = "shoal-test/busybox:1"  # what scripts/docker-up builds


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_docker(image: str = IMAGE) -> None:
    """A Docker engine that answers and the test image: `scripts/docker-up` starts dockerd and builds the image
    when either is missing."""
    present = docker_answers() and subprocess.run(["docker", "image", "inspect", image],
                                                  capture_output=True).returncode == 0
    if present:
        return
    print("docker-up: starting the Docker engine and/or building the test image", file=sys.stderr)
    result = subprocess.run([str(ROOT / "scripts" / "docker-up")], capture_output=True, text=True, timeout=900)
    if result.returncode != 0 or not docker_answers():
        raise BenchError(f"scripts/docker-up failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def docker_versions() -> dict[str, Any]:
    """`docker version --format '{{json .}}'` reduced to the client's and the engine's versions, and the storage
    driver (`docker info`)."""
    raw = subprocess.run(["docker", "version", "--format", "{{json .}}"], capture_output=True, text=True, timeout=60)
    info = json.loads(raw.stdout) if raw.returncode == 0 else {}
    client, server = info.get("Client") or {}, info.get("Server") or {}
    driver = subprocess.run(["docker", "info", "--format", "{{.Driver}}"], capture_output=True, text=True,
                            timeout=60).stdout.strip()
    return {"client": client.get("Version"), "client_api": client.get("ApiVersion"),
            "server": server.get("Version"), "server_api": server.get("ApiVersion"),
            "kernel": server.get("KernelVersion"), "storage_driver": driver}


ENGINE = ("dockerd", "containerd")


def engine_cpu_s() -> float:
    """CPU seconds of the Docker engine's daemons (dockerd, containerd), with what they reaped, from /proc."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name, after = text[text.find("(") + 1:text.rfind(")")], text.rsplit(")", 1)[1].split()
        if name in ENGINE:
            total += sum(int(v) for v in after[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


# -- a throwaway PostgreSQL ---------------------------------------------------------------------------------


def _as_owner(args: list[str], owner: str | None) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", owner, "--", *args] if owner else args


class Postgres:
    """A PostgreSQL server of the benchmark's own in a temp dir under /tmp (the server's user must reach it), on
    a free loopback port, trust authentication, with PostgreSQL's default settings but PG_SETTINGS. The recipe
    of tests/postgres.py, copied (bench/ does not import the tests), minus its durability shortcuts."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="shoal-bench-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.owner = "postgres" if os.geteuid() == 0 else None
        self.user = "shoal"
        self.started = False

    def run(self, *args: str) -> None:
        result = subprocess.run(_as_owner(list(args), self.owner), capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchError(f"{Path(args[0]).name} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
                             f"\n{self.tail()}")

    def start(self) -> Postgres:
        if self.owner:
            shutil.chown(self.root, self.owner)
        # --no-sync only spares initdb's own fsync of the fresh cluster; the server runs with fsync on.
        self.run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync",
                 "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} " + " ".join(f"-c {k}={v}" for k, v in PG_SETTINGS.items())
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"),
                 "-w", "start")
        self.started = True
        return self

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if self.started:
            subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                                     self.owner), capture_output=True)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its SQLAlchemy URL (the gateways migrate it at start)."""
        import psycopg

        name = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@{HOST}:{self.port}/{name}"

    def describe(self) -> dict[str, Any]:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            version = conn.execute("SELECT version()").fetchone()
            settings = {name: conn.execute(f"SHOW {name}").fetchone() for name in PG_REPORTED}
        return {"version": version[0] if version else "", "bin": str(PG_BIN), "set_on_command_line": PG_SETTINGS,
                "settings": {k: v[0] if v else None for k, v in settings.items()}}


# -- processes ----------------------------------------------------------------------------------------------


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
    """Gateway replicas on one database and their agents under `root`; `close()` stops them all."""

    root: Path
    database_url: str = ""  # SQLite in the gateway's data dir when empty
    urls: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    clients: list[httpx.Client] = field(default_factory=list)

    def spawn(self, name: str, *args: str) -> Proc:
        log = self.root / f"{name}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen([sys.executable, "-m", "shoal", *args], stdout=handle,
                                     stderr=subprocess.STDOUT, env=child_env(self.database_url), cwd=ROOT)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check(self, proc: Proc) -> None:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")

    def start_gateways(self, count: int) -> None:
        """`count` replicas, one after another (each migrates the schema at start, under a lock, if needed)."""
        for index in range(count):
            port = free_port()
            url = f"http://{HOST}:{port}"
            proc = self.spawn(f"gateway-{index}", "serve", "--host", HOST, "--port", str(port),
                              "--data-dir", str(self.root / f"gateway-{index}"))
            client = http_client(url)
            self.urls.append(url)
            self.clients.append(client)

            def alive(proc: Proc = proc, client: httpx.Client = client) -> bool:
                self.check(proc)
                try:
                    return client.get("/api/v1/agent/alive").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(alive, timeout=60, what=f"gateway {index} to answer")

    def agent_urls(self, index: int) -> list[str]:
        """Every replica, starting with replica `index % replicas`: the agent polls that one and fails over to
        the next ones in turn."""
        first = index % len(self.urls)
        return self.urls[first:] + self.urls[:first]

    def start_agents(self, count: int, slots: int, *extra: str) -> None:
        """`count` agents with `slots` executions each (and `extra` arguments); waits until all registered."""
        started = []
        for index in range(count):
            data_dir = self.root / f"agent-{index}"
            proc = self.spawn(f"agent-{index}", "agent", "--gateway", ",".join(self.agent_urls(index)),
                              "--data-dir", str(data_dir), "--max-executions", str(slots),
                              "--name", f"bench-agent-{index}", *extra)
            started.append((proc, data_dir / "node.json"))

        def registered() -> bool:
            for proc, _ in started:
                self.check(proc)
            return all(node_json.exists() for _, node_json in started)

        wait_for(registered, timeout=60, what=f"{count} agent(s) to register")

    @property
    def replicas(self) -> int:
        return len(self.urls)

    @property
    def api(self) -> httpx.Client:
        """Replica 0's client, for the benchmark's own bookkeeping queries."""
        return self.clients[0]

    def submit(self, client: httpx.Client, job: dict[str, Any]) -> str:
        response = client.put(JOBS, json={"Job": job})
        if response.status_code != 200:
            raise BenchError(f"submit answered {response.status_code}: {response.text[:500]}")
        return str(response.json()["JobID"])

    def submit_all(self, client: httpx.Client, jobs: list[dict[str, Any]]) -> list[str]:
        response = client.put(JOBS, json={"Jobs": jobs})
        if response.status_code != 200:
            raise BenchError(f"submit answered {response.status_code}: {response.text[:500]}")
        return [str(answer["JobID"]) for answer in response.json()["Jobs"]]

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
        for client in self.clients:
            client.close()


@contextmanager
def stack(root: Path, name: str, database_url: str, replicas: int, agents: int, slots: int,
          queue: int = 0) -> Iterator[Stack]:
    """Gateway replicas and `agents` agents of `slots` slots each (and `queue` executions taken ahead of them)."""
    folder = root / name
    folder.mkdir()
    running = Stack(folder, database_url)
    try:
        running.start_gateways(replicas)
        running.start_agents(agents, slots, *(("--queue", str(queue)) if queue else ()))
        yield running
    except BaseException:
        for proc in running.procs:
            print(f"--- {proc.name} log (last lines) ---\n{proc.tail()}", file=sys.stderr)
        raise
    finally:
        running.close()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- is anything else using the machine? ---------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")
BUSY_ROOTS: list[int] = []  # besides this process: the PostgreSQL postmaster, whose backends are not our children


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def own_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU seconds of this process and of its descendants, and of those of BUSY_ROOTS, by pid, each with its
    group: "bench" (this process), "gateways", "agents", "postgres" or "other" (e.g. runuser)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                after = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(after[1])
        times[int(entry.name)] = (int(after[11]) + int(after[12])) / TICK
    groups = {os.getpid(): "bench"} | {pid: "postgres" for pid in BUSY_ROOTS}
    grew = True
    while grew:
        found = {pid: group_of(pid, groups[parent]) for pid, parent in parents.items()
                 if parent in groups and pid not in groups}
        groups |= found
        grew = bool(found)
    return {pid: (group, times[pid]) for pid, group in groups.items() if pid in times}


def group_of(pid: int, parent_group: str) -> str:
    if parent_group == "postgres":
        return "postgres"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:
        return "other"
    return "gateways" if b"serve" in argv else "agents" if b"agent" in argv else "other"


class CpuWatch:
    """How much CPU the machine spent on this benchmark's processes (this one, the gateways, the agents and the
    PostgreSQL server) and how much on anything else, between start and `stop()` (call it while the processes
    still run). Other busy cores mean the figures were measured on a shared machine."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.busy = machine_busy_s()
        self.own = own_cpu_s()
        self.load = loadavg()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.began
        busy = machine_busy_s() - self.busy
        by_group: dict[str, float] = {}
        for pid, (group, seconds) in own_cpu_s().items():
            by_group[group] = by_group.get(group, 0.0) + seconds - self.own.get(pid, ("", 0.0))[1]
        own = sum(by_group.values())
        other = max(0.0, busy - own)
        return {"wall_s": round(wall, 2), "busy_cores": round(busy / wall, 2), "bench_cores": round(own / wall, 2),
                "other_cores": round(other / wall, 2), "loadavg_before": self.load, "loadavg_after": loadavg(),
                "bench_cores_by_group": {g: round(v / wall, 2) for g, v in sorted(by_group.items())}}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "min": min(values),
            "mean": statistics.fmean(values)}

def machine() -> dict[str, Any]:
    import shoal

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "shoal": shoal.__version__,
    }



def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
