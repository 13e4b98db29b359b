"""Shared fixtures: real gateway and agent processes on loopback ports, a real Docker engine, WASM modules."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.postgres import PostgresServer, own_server

FIXTURES = Path(__file__).parent / "fixtures"
TEST_IMAGE = "shoal-test/busybox:1"
IN_CI = os.environ.get("CI", "").lower() == "true"
ON_POSTGRES = os.environ.get("SHOAL_TEST_BACKEND", "sqlite") == "postgres"  # scripts/test runs both


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


async def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """`wait_for` inside an event loop: the loop runs while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def shoal_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal", *args]


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path
    data_dir: Path | None = None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Gateway:
    url: str
    data_dir: Path
    process: Process
    env: dict[str, str]
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def submit(self, job: dict[str, Any]) -> str:
        response = self.http.put("/api/v1/orchestrator/jobs", json={"Job": job})
        assert response.status_code == 200, response.text
        return str(response.json()["JobID"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/orchestrator/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json()["Job"])

    def executions(self, job_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/api/v1/orchestrator/jobs/{job_id}/executions", params={"all_job_versions": "true"})
        assert response.status_code == 200, response.text
        return list(response.json()["Items"])

    def run(self, job: dict[str, Any], timeout: float = 120.0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Submit a single-partition job, wait for it, and return the job and its only execution."""
        job_id = self.submit(job)
        finished = self.wait_for_job(job_id, timeout=timeout)
        [execution] = self.executions(job_id)
        return finished, execution

    def download(self, job_id: str, out: Path) -> Path:
        """The job's results, fetched through the presigned URLs and laid out like `shoal job get`."""
        from shoal.results import download_results

        items = self.http.get(f"/api/v1/orchestrator/jobs/{job_id}/results").json()["Items"]
        return download_results(items, out)

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["State"]["StateType"] in ("Completed", "Failed", "Stopped") else None

        return dict(wait_for(finished, timeout=timeout, what=f"job {job_id} to finish"))


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> Process:
    handle = open(log, "wb")  # noqa: SIM115 (kept open for the life of the process)
    popen = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env)
    return Process(popen, log)


FAST_GATEWAY_ENV = {
    "SHOAL_LEASE_SECONDS": "3",
    "SHOAL_POLL_SECONDS": "1",
    "SHOAL_HOUSEKEEPING_SECONDS": "0.2",
    "SHOAL_DISCONNECT_SECONDS": "5",
}


class Cluster:
    """Gateway and agent processes under one folder, all stopped by `close()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gateways: list[Gateway] = []
        self.agents: list[Process] = []

    def gateway(self, **settings: str) -> Gateway:
        """Start `shoal serve` on a free loopback port; keyword arguments become SHOAL_* variables. With
        SHOAL_TEST_BACKEND=postgres each gateway gets a fresh PostgreSQL database unless one is given."""
        index = len(self.gateways)
        port = free_port()
        data_dir = self.root / f"gateway-{index}"
        if ON_POSTGRES and "database_url" not in settings:
            settings = settings | {"database_url": postgres_server().create_database()}
        env = dict(os.environ) | FAST_GATEWAY_ENV | {f"SHOAL_{k.upper()}": str(v) for k, v in settings.items()}
        process = _spawn(
            shoal_command("serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)),
            self.root / f"gateway-{index}.log", env,
        )
        gateway = Gateway(f"http://127.0.0.1:{port}", data_dir, process, env)
        self.gateways.append(gateway)

        def alive() -> bool:
            if process.popen.poll() is not None:
                pytest.fail(f"the gateway exited:\n{process.output()}")
            try:
                return gateway.http.get("/api/v1/agent/alive").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(alive, timeout=30, what="the gateway to answer")
        return gateway

    def agent(self, gateway: Gateway, *extra: str, data_dir: Path | None = None,
              replicas: list[Gateway] | None = None) -> Process:
        """Start `shoal agent` against `gateway` (and the other `replicas`, to fail over to) and wait until it
        has registered; `data_dir` of an earlier agent restarts that node."""
        index = len(self.agents)
        data_dir = data_dir or self.root / f"agent-{index}"
        urls = ",".join([gateway.url, *(r.url for r in replicas or [] if r is not gateway)])
        process = _spawn(
            shoal_command("agent", "--gateway", urls, "--data-dir", str(data_dir), "--name", f"agent-{index}",
                          *extra),
            self.root / f"agent-{index}.log", gateway.env,
        )
        process.data_dir = data_dir
        self.agents.append(process)

        def registered() -> bool:
            if process.popen.poll() is not None:
                pytest.fail(f"the agent exited:\n{process.output()}")
            return (data_dir / "node.json").exists()

        wait_for(registered, timeout=30, what="the agent to register")
        return process

    def close(self) -> None:
        for process in self.agents:
            process.stop()
        for gateway in self.gateways:
            gateway.process.stop()
            gateway.http.close()


_POSTGRES: list[PostgresServer] = []


def postgres_server() -> PostgresServer:
    """The session's PostgreSQL server, started on first use and stopped when the tests end."""
    if not _POSTGRES:
        import atexit
        import tempfile

        server = PostgresServer(Path(tempfile.mkdtemp(prefix="shoal-pg-")), free_port()).start()
        atexit.register(server.stop, "immediate")
        _POSTGRES.append(server)
    return _POSTGRES[0]


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which it may stop and restart."""
    with own_server(free_port()) as server:
        yield server


def one_agent_stack(factory: pytest.TempPathFactory, name: str, *agent_args: str) -> Iterator[Gateway]:
    """A gateway that fails a job at its first failed execution, with one agent: for module fixtures."""
    running = Cluster(factory.mktemp(name))
    gateway = running.gateway(max_attempts="1")
    running.agent(gateway, *agent_args)
    yield gateway
    running.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Processes for one test."""
    running = Cluster(tmp_path)
    yield running
    running.close()


@pytest.fixture
def start_gateway(cluster: Cluster) -> Callable[..., Gateway]:
    return cluster.gateway


@pytest.fixture
def gateway(cluster: Cluster) -> Gateway:
    return cluster.gateway()


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    """A Docker client with the test image present; in CI a missing engine fails instead of skipping."""
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get(TEST_IMAGE)
    except (DockerException, ImageNotFound) as exc:
        message = f"Docker engine or {TEST_IMAGE} missing ({exc}); run scripts/docker-up"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return client


@pytest.fixture(scope="session")
def probe_wasm() -> Path:
    return FIXTURES / "wasm" / "probe.wasm"


# -- S3: moto's server over real HTTP ---------------------------------------------------------------------

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: Any


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto S3 server on a loopback port with one fresh bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"shoal-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    yield S3(endpoint, bucket, client)
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for boto3 here and in the processes a test starts (they inherit os.environ)."""
    for name in AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
