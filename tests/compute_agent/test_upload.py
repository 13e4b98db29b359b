"""The agent's direct PUT of a results archive (compute_agent/upload.py), against a real socket server,
on the event loop the agent runs on."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import httpx
import pytest
import uvloop

from compute_agent.errors import GatewayError
from compute_agent.gateway_client import GatewayClient
from compute_agent.upload import direct


class Server:
    """An HTTP/1.1 server on loopback that reads one request (all of its body, or none with `early`) and
    answers `status`."""

    def __init__(self, status: int = 200, *, early: bool = False) -> None:
        self.status, self.early = status, early
        self.head = b""
        self.body = b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in self.head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        if not self.early:
            self.body = await reader.readexactly(length)
        message = b"refused" if self.status >= 400 else b""
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (self.status, len(message), message))
        await writer.drain()
        writer.close()


async def put(server: Server, path: Path, headers: dict[str, str] | None = None) -> None:
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    client = GatewayClient("http://127.0.0.1:1", poll_seconds=1)
    try:
        url = f"http://127.0.0.1:{port}/bucket/key.tar.gz?X-Amz-Signature=abc%2Fdef"
        await client.upload(url, "PUT", headers or {}, path, path.stat().st_size)
    finally:
        await client.aclose()
        listening.close()
        await listening.wait_closed()


def test_the_file_arrives_byte_for_byte_with_the_presigned_headers(tmp_path: Path) -> None:
    path = tmp_path / "results.tar.gz"
    path.write_bytes(os.urandom(8 * 1024 * 1024 + 17))
    server = Server()
    uvloop.run(put(server, path, {"x-amz-checksum-sha256": "c3VtCg=="}))
    assert hashlib.sha256(server.body).digest() == hashlib.sha256(path.read_bytes()).digest()
    lines = server.head.decode().split("\r\n")
    assert lines[0] == "PUT /bucket/key.tar.gz?X-Amz-Signature=abc%2Fdef HTTP/1.1"  # the query as signed
    assert f"Content-Length: {path.stat().st_size}" in lines
    assert "x-amz-checksum-sha256: c3VtCg==" in lines
    assert not any(line.lower().startswith(("transfer-encoding", "authorization")) for line in lines)


def test_an_answer_before_the_body_is_read_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "results.tar.gz"
    path.write_bytes(os.urandom(32 * 1024 * 1024))  # more than the socket buffers hold
    with pytest.raises(GatewayError, match="HTTP 403: refused") as refused:
        uvloop.run(put(Server(403, early=True), path))
    assert refused.value.status == 403


def test_a_file_shorter_than_declared_fails_at_once(tmp_path: Path) -> None:
    """The file shrank after its size was taken (it is the agent's own archive, but a disk can fail): the
    upload fails saying so, instead of leaving the server waiting for the rest."""
    path = tmp_path / "results.tar.gz"
    path.write_bytes(os.urandom(300 * 1024))
    server = Server()

    async def short() -> None:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        client = GatewayClient("http://127.0.0.1:1", poll_seconds=1)
        try:
            url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/bucket/key.tar.gz"
            await asyncio.wait_for(client.upload(url, "PUT", {}, path, path.stat().st_size + 10), 30)
        finally:
            await client.aclose()
            listening.close()

    with pytest.raises(GatewayError, match="10 bytes short"):
        uvloop.run(short())


def test_a_header_with_a_line_break_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.tar.gz"
    path.write_bytes(b"x")
    server = Server()
    with pytest.raises(GatewayError, match="line breaks"):
        uvloop.run(put(server, path, {"x-amz-meta": "a\r\nInjected: yes"}))
    assert server.head == b""


def test_only_plain_http_without_a_proxy_goes_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert direct(httpx.URL("http://store.internal:9000/b/k"))
    assert not direct(httpx.URL("https://s3.amazonaws.com/b/k"))
    monkeypatch.setenv("http_proxy", "http://proxy.internal:3128")
    assert not direct(httpx.URL("http://store.internal:9000/b/k"))
    monkeypatch.setenv("no_proxy", "store.internal")
    assert direct(httpx.URL("http://store.internal:9000/b/k"))
