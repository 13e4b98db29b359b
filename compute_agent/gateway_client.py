"""The agent's side of the agent API (`/api/v1/compute/…`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from compute_agent.errors import GatewayError, NotRegistered
from compute_agent.upload import direct, proxy_for, put_file

_BASE = "/api/v1/compute"


class GatewayClient:
    """Async calls to the gateway, authenticated with the node credential once registered. `base_urls` may
    name several replicas (comma-separated): a call that cannot connect to one goes to the next.

    Calls go through aiohttp, whose HTTP parser is in C: a call and its answer (an assignment can carry tens of
    KB of inline inputs) cost the agent about a quarter of the CPU they did through httpx, on every job. Uploads
    that cannot go straight to a socket (HTTPS, a proxy) stream through httpx. Both honour the proxy settings
    of the environment; for the calls they are read once, at start (aiohttp's `trust_env` would look them and
    ~/.netrc up again on every call, in a worker thread)."""

    def __init__(self, base_urls: str, *, poll_seconds: float) -> None:
        self._urls = [url.strip().rstrip("/") for url in base_urls.split(",") if url.strip()]
        self._proxies = [proxy_for(httpx.URL(url)) for url in self._urls]
        self._current = 0
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=poll_seconds + 30.0)
        self._session: aiohttp.ClientSession | None = None  # made on first use, on the loop that uses it
        self._uploads = httpx.AsyncClient(timeout=httpx.Timeout(30.0))  # only for uploads through httpx
        self.credential = ""

    @property
    def url(self) -> str:
        """The replica calls go to now."""
        return self._urls[self._current]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._uploads.aclose()

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST to the current replica; when it refuses connections, to the next ones in turn (the request was
        never sent, so trying again elsewhere is safe). Returns the answer's status and body."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        for _ in range(len(self._urls)):
            try:
                async with self._session.post(self.url + _BASE + path, data=body, headers=headers,
                                              proxy=self._proxies[self._current]) as response:
                    return response.status, await response.read()
            except aiohttp.ClientConnectorError as exc:
                error: Exception = exc
                self._current = (self._current + 1) % len(self._urls)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise GatewayError(f"cannot reach the gateway: {exc!r}") from exc
        raise GatewayError(f"cannot reach the gateway: {error!r}") from error

    async def _call(self, path: str, body: dict[str, Any] | bytes, *,
                    auth: str | None = None) -> dict[str, Any] | None:
        token = self.credential if auth is None else auth
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        status, content = await self._post(path, body if isinstance(body, bytes) else orjson.dumps(body), headers)
        if status == 204:
            return None
        try:
            reply = orjson.loads(content)
        except orjson.JSONDecodeError:
            reply = None
        if status >= 400:
            text = content.decode("utf-8", "replace")
            message = str(reply.get("Message", text)) if isinstance(reply, dict) else text
            kind = NotRegistered if status == 401 and auth is None else GatewayError
            raise kind(f"{path}: {message}", status)
        if not isinstance(reply, dict):
            raise GatewayError(f"{path}: the gateway answered {status} without a JSON object", status)
        return reply

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

    async def complete_all(self, completions: Sequence[bytes], slots: int | None) -> dict[str, Any]:
        """Report several executions completed: each of `completions` is one's JSON object, with its ExecutionID.
        The answer has the executions taken for the freed slots (with `slots`), and those the gateway refused."""
        body = b'{"Completions":[' + b",".join(completions) + b"]" + \
            (b"" if slots is None else b',"Slots":%d' % slots) + b"}"
        return await self._call("/completions", body) or {}

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

        response = await self._uploads.request(
            method, url, content=chunks(), headers=headers | {"Content-Length": str(size)}, timeout=None
        )
        return response.status_code, response.text
