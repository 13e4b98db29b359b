"""The HTTP client for Shoal's user API (Bacalhau's orchestrator API v1)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from shoal.errors import APIError, ConnectError, NotFoundError, ShoalError

DEFAULT_API_URL = "http://127.0.0.1:1234"
TERMINAL_STATES = ("Completed", "Failed", "Stopped")
_JOBS = "/api/v1/orchestrator/jobs"


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    yield from iter(lambda: handle.read(1 << 20), b"")


def authorization_from_env(env: Mapping[str, str] | None = None) -> str:
    """The Authorization header for SHOAL_API_KEY, or SHOAL_API_USERNAME and SHOAL_API_PASSWORD (or the
    BACALHAU_ names); empty without credentials."""
    env = os.environ if env is None else env

    def read(name: str) -> str:
        return env.get(f"SHOAL_{name}") or env.get(f"BACALHAU_{name}") or ""

    if read("API_KEY"):
        return f"Bearer {read('API_KEY')}"
    if read("API_USERNAME"):
        pair = f"{read('API_USERNAME')}:{read('API_PASSWORD')}".encode()
        return f"Basic {base64.b64encode(pair).decode()}"
    return ""


def api_url_from_env(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("SHOAL_API_URL") or DEFAULT_API_URL


class Client:
    """A blocking client; `api_url` is the gateway's base URL, e.g. `http://127.0.0.1:1234`."""

    def __init__(self, api_url: str = DEFAULT_API_URL, *, timeout: float = 30.0,
                 authorization: str | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        authorization = authorization_from_env() if authorization is None else authorization
        headers = {"Authorization": authorization} if authorization else {}
        self._http = httpx.Client(base_url=self.api_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach the gateway at {self.api_url}: {exc}") from exc
        if response.is_error:
            raise _api_error(response)
        return response.json() if response.content else {}

    # -- jobs -------------------------------------------------------------------------------------------

    def submit(self, job: Mapping[str, Any], *, force: bool = False) -> dict[str, Any]:
        """Submit a job spec; returns `{JobID, EvaluationID, Warnings}`."""
        result: dict[str, Any] = self.request("PUT", _JOBS, json={"Job": dict(job), "Force": force})
        return result

    def submit_all(self, jobs: Sequence[Mapping[str, Any]], *, force: bool = False) -> list[dict[str, Any]]:
        """Submit up to 1,000 job specs in one request and one transaction (all are stored, or none); returns
        `{JobID, JobVersion, EvaluationID, Warnings}` for each, in their order."""
        result: list[dict[str, Any]] = self.request("PUT", _JOBS, json={"Jobs": [dict(job) for job in jobs],
                                                                        "Force": force})["Jobs"]
        return result

    def diff(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a spec and compare it with the latest version of the job it names."""
        result: dict[str, Any] = self.request("PUT", f"{_JOBS}/diff", json={"Job": dict(job)})
        return result

    def rerun(self, ref: str, *, version: int = 0, namespace: str = "") -> dict[str, Any]:
        params = {"namespace": namespace} if namespace else {}
        result: dict[str, Any] = self.request("PUT", f"{_JOBS}/{ref}/rerun", params=params,
                                              json={"JobVersion": version})
        return result

    def versions(self, ref: str, *, namespace: str = "") -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else {}
        items: list[dict[str, Any]] = self.request("GET", f"{_JOBS}/{ref}/versions", params=params)["Items"]
        return items

    def job(self, ref: str, *, include: str = "", namespace: str = "", version: int = 0) -> dict[str, Any]:
        params = {k: v for k, v in {"include": include, "namespace": namespace, "job_version": version}.items() if v}
        result: dict[str, Any] = self.request("GET", f"{_JOBS}/{ref}", params=params)
        return result

    def jobs(self, *, limit: int = 10, next_token: str = "", **filters: Any) -> dict[str, Any]:
        params = {"limit": limit, "next_token": next_token, **filters}
        result: dict[str, Any] = self.request("GET", _JOBS, params={k: v for k, v in params.items() if v != ""})
        return result

    def executions(self, ref: str, *, namespace: str = "") -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else {}
        items: list[dict[str, Any]] = self.request("GET", f"{_JOBS}/{ref}/executions", params=params)["Items"]
        return items

    def stop(self, ref: str, *, reason: str = "", namespace: str = "") -> dict[str, Any]:
        params = {k: v for k, v in {"reason": reason, "namespace": namespace}.items() if v}
        result: dict[str, Any] = self.request("DELETE", f"{_JOBS}/{ref}", params=params)
        return result

    def history(self, ref: str, *, event_type: str = "all", execution_id: str = "", namespace: str = "",
                next_token: str = "", limit: int = 100) -> dict[str, Any]:
        params = {"event_type": event_type, "execution_id": execution_id, "namespace": namespace,
                  "next_token": next_token, "limit": limit}
        result: dict[str, Any] = self.request("GET", f"{_JOBS}/{ref}/history",
                                              params={k: v for k, v in params.items() if v})
        return result

    def logs(self, ref: str, *, follow: bool = False, execution_id: str = "", tail: int = 0,
             namespace: str = "") -> Iterator[dict[str, Any]]:
        """Log lines as `{Type, Stream, Line, ExecutionID}`; with `follow`, until the execution ends."""
        params = {"format": "ndjson", "follow": "true" if follow else "", "execution_id": execution_id,
                  "tail": tail, "namespace": namespace}
        try:
            with self._http.stream("GET", f"{_JOBS}/{ref}/logs", params={k: v for k, v in params.items() if v},
                                   timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.is_error:
                    response.read()
                    raise _api_error(response)
                for line in response.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach the gateway at {self.api_url}: {exc}") from exc

    def results(self, ref: str, *, namespace: str = "") -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else {}
        items: list[dict[str, Any]] = self.request("GET", f"{_JOBS}/{ref}/results", params=params)["Items"]
        return items

    def wait(self, ref: str, *, timeout: float = 600.0, interval: float = 0.25, namespace: str = "") -> dict[str, Any]:
        """Poll until the job is Completed, Failed or Stopped; returns the job."""
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.job(ref, namespace=namespace)["Job"]
            if job["State"]["StateType"] in TERMINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise ShoalError(f"job {job['ID']} is still {job['State']['StateType']} after {timeout:.0f}s")
            time.sleep(interval)

    # -- uploads ----------------------------------------------------------------------------------------

    def upload(self, path: Path, *, namespace: str = "") -> dict[str, Any]:
        """Send a local file to the gateway's object store; returns the `managed` input Source naming it."""
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name).lstrip("._-")[:128] or "upload"
        body = {"Name": name, "Size": path.stat().st_size, "SHA256": digest.hexdigest(), "Namespace": namespace}
        target = self.request("POST", "/api/v1/uploads", json={k: v for k, v in body.items() if v != ""})
        try:
            with open(path, "rb") as handle:
                response = httpx.request(target["Method"], target["URL"], content=_chunks(handle),
                                         headers=target["Headers"], timeout=httpx.Timeout(30.0, write=None))
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot upload {path}: {exc}") from exc
        if response.is_error:
            raise APIError(response.status_code, f"uploading {path} failed: {response.text[:500]}")
        source: dict[str, Any] = target["Source"]
        return source

    # -- credentials and audit ------------------------------------------------------------------------

    def create_token(self, *, name: str, capabilities: list[str], namespace: str, expires_in: int) -> dict[str, Any]:
        body = {"Name": name, "Capabilities": capabilities, "Namespace": namespace, "ExpiresIn": expires_in}
        result: dict[str, Any] = self.request("POST", "/api/v1/auth/tokens", json={k: v for k, v in body.items() if v})
        return result

    def tokens(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/auth/tokens")["Items"]
        return items

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/api/v1/auth/tokens/{token_id}")["Token"]
        return result

    def create_join_token(self, *, expires_in: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/api/v1/orchestrator/nodes/join-tokens",
                                              json={"ExpiresIn": expires_in})
        return result

    def audit(self, *, actor: str = "", action: str = "", limit: int = 100, next_token: str = "") -> dict[str, Any]:
        params = {"actor": actor, "action": action, "limit": limit, "next_token": next_token}
        result: dict[str, Any] = self.request("GET", "/api/v1/audit", params={k: v for k, v in params.items() if v})
        return result

    # -- nodes ------------------------------------------------------------------------------------------

    def nodes(self, **filters: str) -> list[dict[str, Any]]:
        params = {k.replace("_", "-"): v for k, v in filters.items() if v}
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/orchestrator/nodes", params=params)["Nodes"]
        return items

    def node(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/v1/orchestrator/nodes/{ref}")["Node"]
        return result

    def node_action(self, ref: str, action: str, message: str = "") -> dict[str, Any]:
        body = {"Action": action, "NodeID": ref, "Message": message}
        result: dict[str, Any] = self.request("PUT", "/api/v1/orchestrator/nodes", json=body)
        return result

    # -- agent ------------------------------------------------------------------------------------------

    def alive(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/api/v1/agent/alive")
        return result

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/api/v1/agent/version")
        return result


def _api_error(response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("Message") or response.text or response.reason_phrase)
    kind = NotFoundError if response.status_code == 404 else APIError
    return kind(response.status_code, message, str(body.get("Code", "")), str(body.get("Hint", "")))
