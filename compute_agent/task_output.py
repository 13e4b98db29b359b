"""One output stream of a task (stdout or stderr): written by the executor's thread as the task writes it, read
by the agent's log shipper while it runs and by the completion after.

A task whose results are published keeps the stream in its file in the results folder, which is archived with
them. Any other keeps it in memory up to `in_memory` bytes, and only past that moves it to that file and goes
on there: a short task that publishes nothing makes no file on the agent's disk (making and removing a task's
folder and files was a good part of what a tiny task cost the agent)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

IN_MEMORY = 1 << 20  # bytes of a stream kept in memory when the task's results are not published


class TaskOutput:
    """Keeps at most `cap` bytes (the task's output cap, as Docker and WASM tasks have it); the rest is dropped."""

    def __init__(self, path: Path, in_memory: int = 0, cap: int | None = None) -> None:
        self.path = path
        self._limit = in_memory
        self._cap = cap
        self._memory: bytearray | None = bytearray() if in_memory else None
        self._file: int | None = None  # our descriptor of the file, from its first write to close()
        self._made = False  # the file
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes kept so far."""
        return self._size

    def write(self, data: bytes) -> None:
        """Append `data`, up to the cap; readers see it as soon as this returns."""
        with self._lock:
            if self._cap is not None:
                data = data[: max(0, self._cap - self._size)]
            if not data:
                return
            if self._memory is not None and self._size + len(data) > self._limit:
                self._spill()
            if self._memory is not None:
                self._memory += data
            else:
                self._write_file(data)
            self._size += len(data)

    def read(self, start: int = 0, limit: int = -1) -> bytes:
        """Up to `limit` bytes (all when negative) from byte `start` on."""
        with self._lock:
            if self._memory is not None:
                end = len(self._memory) if limit < 0 else start + limit
                return bytes(self._memory[start:end])
            if not self._made:
                return b""
        with open(self.path, "rb") as handle:  # a reader of its own: the writer's offset is not touched
            handle.seek(start)
            return handle.read(limit)

    def close(self) -> None:
        """No more writes. A stream kept on disk has its file now, empty if nothing was written."""
        with self._lock:
            if self._memory is None and not self._made:
                self._write_file(b"")
            if self._file is not None:
                os.close(self._file)
                self._file = None

    def _spill(self) -> None:
        assert self._memory is not None
        kept, self._memory = self._memory, None
        self._write_file(kept)

    def _write_file(self, data: bytes | bytearray) -> None:
        if self._file is None:
            if self._made:
                raise ValueError(f"{self.path} is closed")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            self._made = True
        view = memoryview(data)
        while view:
            view = view[os.write(self._file, view):]
