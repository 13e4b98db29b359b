"""A file PUT to a plain-HTTP presigned URL straight over a socket, the file read into one reused buffer and
written out with the GIL released, as curl does (HTTPS and proxied URLs go through httpx). Blocking, for a
worker thread. `sendfile` was tried: on loopback to the gateway's store it ran at about 0.9x this."""

from __future__ import annotations

import contextlib
import io
import socket
import urllib.request
from pathlib import Path

import httpx

MAX_BODY = 64 * 1024  # of an answer, kept for its error message
CHUNK = 256 * 1024  # bytes read and sent at a time
IDLE_SECONDS = 300.0  # without progress, a transfer fails


def proxy_for(url: httpx.URL) -> str | None:
    """The proxy the environment names for `url` (http_proxy, https_proxy, no_proxy), if any."""
    proxy = urllib.request.getproxies().get(url.scheme)
    return None if proxy is None or urllib.request.proxy_bypass(url.host) else proxy


def direct(url: httpx.URL) -> bool:
    """Whether a PUT to `url` can go straight to its host: plain HTTP and no proxy for it."""
    return url.scheme == "http" and proxy_for(url) is None


def put_file(url: httpx.URL, method: str, headers: dict[str, str], path: Path, size: int) -> tuple[int, str]:
    """Send `size` bytes of `path` as the body of one HTTP/1.1 request; returns the answer's status and body.
    Raises OSError when the connection fails before an answer."""
    lines = [f"{method} {url.raw_path.decode('ascii')} HTTP/1.1", f"Host: {url.netloc.decode('ascii')}",
             f"Content-Length: {size}", "Connection: close"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length", "connection", "transfer-encoding"):
            continue
        if any(c in f"{name}{value}" for c in "\r\n\0"):
            raise ValueError(f"header {name!r}: line breaks are not allowed")
        lines.append(f"{name}: {value}")
    with socket.create_connection((url.host, url.port or 80), timeout=IDLE_SECONDS) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        # the server may answer (and close) before it has read everything: then its answer says why
        with contextlib.suppress(ConnectionError), path.open("rb", buffering=0) as handle:
            _send(sock, handle, size)
        with sock.makefile("rb") as answer:
            return _answer(answer)


def _send(sock: socket.socket, handle: io.RawIOBase, size: int) -> None:
    """The first `size` bytes of the file; raises EOFError when it is shorter."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    left = size
    while left:
        read = handle.readinto(view[:min(left, CHUNK)])
        if not read:
            raise EOFError(f"the file ended {left} bytes short of {size}")
        sock.sendall(view[:read])
        left -= read


def _answer(answer: io.BufferedIOBase) -> tuple[int, str]:
    status_line = answer.readline(1024)
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"no HTTP answer (got {status_line[:80]!r})")
    length = None
    while (line := answer.readline(8192)) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = int(value.strip())
    body = answer.read(min(MAX_BODY if length is None else length, MAX_BODY))
    return int(parts[1]), body.decode("utf-8", "replace")
