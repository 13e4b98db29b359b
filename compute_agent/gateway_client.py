"""The agent's side of the agent API (`/api/v1/compute/…`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from compute_agent.errors import GatewayError, NotRegistered
from compute_agent.upload import direct, put_file

_BASE = "/api/v1/compute"


class GatewayClient:
    """Async calls to the gateway, authenticated with the node credential once registered. `base_urls` may
    name several replicas (comma-separated): a call that cannot connect to one goes to the next."""

    def __init__(self, base_urls: str, *, poll_seconds: float) -> None:
        timeout = httpx.Timeout(30.0, read=poll_seconds + 30.0)
        self._urls = [url.strip().rstrip("/") for url in base_urls.split(",") if url.strip()]
        self._current = 0
        self._http = httpx.AsyncClient(timeout=timeout)
        self.credential = ""

    @property
    def url(self) -> str:
        """The replica calls go to now."""
        return self._urls[self._current]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """POST to the current replica; when it refuses connections, to the next ones in turn (the request was
        never sent, so trying again elsewhere is safe)."""
        for _ in range(len(self._urls)):
            try:
                return await self._http.post(self.url + _BASE + path, json=body, headers=headers)
            except httpx.ConnectError as exc:
                error: httpx.TransportError = exc
                self._current = (self._current + 1) % len(self._urls)
            except httpx.TransportError as exc:
                raise GatewayError(f"cannot reach the gateway: {exc!r}") from exc
        raise GatewayError(f"cannot reach the gateway: {error!r}") from error

    async def _call(self, path: str, body: dict[str, Any], *, auth: str | None = None) -> dict[str, Any] | None:
        token = self.credential if auth is None else auth
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self._post(path, body, headers)
        if response.status_code == 204:
            return None
        if response.is_error:
            try:
                message = str(response.json().get("Message", response.text))
            except ValueError:
                message = response.text
            kind = NotRegistered if response.status_code == 401 and auth is None else GatewayError
            raise kind(f"{path}: {message}", response.status_code)
        result: dict[str, Any] = response.json()
        return result

    async def register(self, info: dict[str, Any], join_token: str) -> dict[str, Any]:
        reply = await self._call("/register", info, auth=join_token)
        if reply is None:
            raise GatewayError("/register: empty reply")
        self.credential = reply["Credential"]
        return reply

    async def poll(self, info: dict[str, Any], running: Sequence[str], free: int, wait: float) -> dict[str, Any]:
        body = info | {"Running": list(running), "FreeSlots": free, "Wait": wait}
        return await self._call("/poll", body) or {"Executions": [], "Cancel": []}

    async def status(self, execution_id: str, state: str, message: str = "") -> None:
        await self._call(f"/executions/{execution_id}/status", {"State": state, "Message": message})

    async def publish(self, execution_id: str, size: int, sha256: str) -> dict[str, Any]:
        reply = await self._call(f"/executions/{execution_id}/publish", {"Size": size, "SHA256": sha256})
        if reply is None:
            raise GatewayError("/publish: empty reply")
        return reply

    async def logs(self, execution_id: str, chunks: list[dict[str, Any]]) -> None:
        await self._call(f"/executions/{execution_id}/logs", {"Chunks": chunks})

    async def complete(self, execution_id: str, outcome: dict[str, Any]) -> list[dict[str, Any]]:
        """Report the execution completed; with `Slots` in `outcome`, the executions taken for its slot."""
        reply = await self._call(f"/executions/{execution_id}/complete", outcome)
        return list((reply or {}).get("Executions") or [])

    async def fail(self, execution_id: str, message: str) -> None:
        await self._call(f"/executions/{execution_id}/fail", {"Message": message})

    async def upload(self, url: str, method: str, headers: dict[str, str], path: Path, size: int) -> None:
        """PUT a file to a presigned URL, streamed from disk (with `sendfile` on plain HTTP)."""
        target = httpx.URL(url)
        try:
            if direct(target):
                status, text = await asyncio.to_thread(put_file, target, method, headers, path, size)
            else:
                status, text = await self._put_streamed(target, method, headers, path, size)
        except (OSError, EOFError, ValueError, httpx.TransportError) as exc:
            raise GatewayError(f"upload failed: {exc!r}") from exc
        if status >= 400:
            raise GatewayError(f"upload refused with HTTP {status}: {text[:200]}", status)

    async def _put_streamed(self, url: httpx.URL, method: str, headers: dict[str, str], path: Path,
                            size: int) -> tuple[int, str]:
        async def chunks() -> Any:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk

        response = await self._http.request(
            method, url, content=chunks(), headers=headers | {"Content-Length": str(size)}, timeout=None
        )
        return response.status_code, response.text
