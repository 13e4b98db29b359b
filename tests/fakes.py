"""A compute node that speaks the agent protocol by hand (register, poll, publish, complete), for tests that
need to hold an execution at one step; and the small result archive such a node publishes."""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Any, NamedTuple

import httpx

from tests.conftest import Gateway

EMPTY_MODULE = "data:application/wasm;base64,AGFzbQEAAAA="
WASM_JOB = {
    "Type": "batch",
    "Tasks": [{
        "Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/app/m.wasm"}},
        "InputSources": [{"Target": "/app/m.wasm", "Source": {"Type": "inline", "Params": {"URL": EMPTY_MODULE}}}],
    }],
}
NODE_INFO = {"Engines": ["wasm"], "Publishers": ["s3managed"], "StorageSources": ["inline"]}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def result_archive(stdout: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("exitCode", b"0"), ("stderr", b""), ("stdout", stdout)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Claim(NamedTuple):
    job_id: str
    execution_id: str


class FakeAgent:
    """Registers on creation; `claim()` submits a tiny WASM job and takes its execution."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        response = gateway.http.post("/api/v1/compute/register", json=NODE_INFO)
        assert response.status_code == 200, response.text
        self.auth = {"Authorization": f"Bearer {response.json()['Credential']}"}

    def claim(self) -> Claim:
        job_id = self.gateway.submit(WASM_JOB)
        response = self.gateway.http.post("/api/v1/compute/poll", headers=self.auth, json={"FreeSlots": 1, "Wait": 1})
        assert response.status_code == 200, response.text
        [assignment] = response.json()["Executions"]
        assert assignment["JobID"] == job_id
        return Claim(job_id, assignment["ExecutionID"])

    def publish(self, execution_id: str, size: int, digest: str) -> dict[str, Any]:
        response = self.gateway.http.post(f"/api/v1/compute/executions/{execution_id}/publish",
                                          headers=self.auth, json={"Size": size, "SHA256": digest})
        assert response.status_code == 200, response.text
        target = dict(response.json())
        assert target["Method"] == "PUT"
        return target

    def complete(self, execution_id: str) -> httpx.Response:
        return self.gateway.http.post(f"/api/v1/compute/executions/{execution_id}/complete",
                                      headers=self.auth, json={"ExitCode": 0, "Published": True})
