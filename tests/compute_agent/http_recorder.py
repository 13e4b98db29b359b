"""A small real HTTP server, run in a thread, that records every request and answers through a callback.

It stands in for the gateway and for a presigned object-store URL in the agent's unit tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # with the query string
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def of_json(value: Any, status: int = 200) -> Reply:
        return Reply(status, json.dumps(value).encode(), (("Content-Type", "application/json"),))


Responder = Callable[[Recorded], Reply]


class RecordingServer:
    """`requests` holds every request in arrival order; `answered` pairs each answered one with its reply."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.requests: list[Recorded] = []
        self.answered: list[tuple[Recorded, Reply]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                record = Recorded(self.command, self.path, headers, self._body(headers))
                with server._lock:
                    server.requests.append(record)
                reply = server.respond(record)
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                with server._lock:
                    server.answered.append((record, reply))

            def _body(self, headers: dict[str, str]) -> bytes:
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    data = bytearray()
                    while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return bytes(data)
                return self.rfile.read(int(headers.get("content-length", "0")))

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def answered_snapshot(self) -> list[tuple[Recorded, Reply]]:
        with self._lock:
            return list(self.answered)

    @contextmanager
    def running(self) -> Iterator[RecordingServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
