"""WebAssembly tasks with wasmtime and WASI: argv, env, read-only input preopens, writable ResultPaths,
no network, a memory cap, and epoch interruption for timeouts and cancellation."""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time
from collections import OrderedDict
from pathlib import Path, PurePosixPath

import wasmtime

from compute_agent.errors import ExecutorError, TimeoutExpired
from compute_agent.workspace import TaskRun

_CACHE_SIZE = 32


class WasmExecutor:
    name = "wasm"

    def __init__(self) -> None:
        self._compiled: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def available(self) -> bool:
        return True

    def reap(self, node_id: str) -> int:
        return 0  # a WASM task dies with its agent

    def run(self, task: TaskRun, cancel: threading.Event) -> int:
        # An engine per task, so that interrupting one task (one epoch tick) touches no other;
        # compiled code is shared between engines through the digest cache.
        config = wasmtime.Config()
        config.epoch_interruption = True
        engine = wasmtime.Engine(config)
        module = self._module(engine, _entry_module(task))
        stopped = threading.Event()
        reason: list[str] = []

        def watch() -> None:
            deadline = time.monotonic() + task.timeout if task.timeout else None
            while not stopped.wait(0.05):
                if cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                    reason.append("cancel" if cancel.is_set() else "timeout")
                    engine.increment_epoch()
                    return

        pipes = [_OutputPipe(path, task.max_output_bytes) for path in (task.stdout_path, task.stderr_path)]
        try:
            store = wasmtime.Store(engine)
            store.set_wasi(self._wasi(task, pipes[0].fifo, pipes[1].fifo))
            if task.memory:
                store.set_limits(memory_size=task.memory)
            store.set_epoch_deadline(1)
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            threading.Thread(target=watch, daemon=True).start()
            instance = linker.instantiate(store, module)
            entry = instance.exports(store).get(task.params.get("Entrypoint") or "_start")
            if not isinstance(entry, wasmtime.Func):
                raise ExecutorError(f"the module exports no function {task.params.get('Entrypoint')!r}")
            entry(store)
            return 0
        except wasmtime.ExitTrap as exc:
            return int(exc.code)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if reason == ["timeout"]:
                raise TimeoutExpired(f"Execution timed out after {task.timeout:g}s") from None
            if reason == ["cancel"]:
                raise ExecutorError("the execution was cancelled") from None
            raise ExecutorError(f"the WASM module trapped: {exc}") from exc
        finally:
            stopped.set()
            for pipe in pipes:
                pipe.close()

    def _module(self, engine: wasmtime.Engine, path: Path) -> wasmtime.Module:
        """Compile once per digest; later runs load the compiled code."""
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            compiled = self._compiled.get(digest)
            if compiled is not None:
                self._compiled.move_to_end(digest)
        try:
            if compiled is not None:
                return wasmtime.Module.deserialize(engine, compiled)
            module = wasmtime.Module(engine, data)
        except wasmtime.WasmtimeError as exc:
            raise ExecutorError(f"{path.name} is not a valid WASM module: {exc}") from exc
        with self._lock:
            self._compiled[digest] = bytes(module.serialize())
            while len(self._compiled) > _CACHE_SIZE:
                self._compiled.popitem(last=False)
        return module

    @staticmethod
    def _wasi(task: TaskRun, stdout: Path, stderr: Path) -> wasmtime.WasiConfig:
        wasi = wasmtime.WasiConfig()
        entry = str(task.params.get("EntryModule", "main.wasm"))
        wasi.argv = [PurePosixPath(entry).name, *task.params.get("Parameters", [])]
        wasi.env = sorted(task.env.items())
        wasi.stdout_file = str(stdout)
        wasi.stderr_file = str(stderr)
        for host, guest, writable in _preopens(task):
            wasi.preopen_dir(str(host), guest, writable)
        return wasi


class _OutputPipe:
    """A FIFO that stands in for one output stream of the module: a thread copies what the module writes to
    `path` as it comes (the agent's log shipper tails it), keeping at most `cap` bytes, as Docker tasks do.
    A write returns once its bytes are in the pipe, so when the module has returned, `close()` drains the rest;
    it wakes the copying thread at once (a byte on a second pipe) instead of letting it finish a wait."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path, self.cap = path, cap
        self.fifo = path.with_name(f".{path.name}.fifo")
        os.mkfifo(self.fifo, 0o600)
        self._fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that wasmtime's open for writing returns
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._copy, daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        written = 0
        with open(self.path, "wb") as out:
            while True:
                stopping = self._stop.is_set()
                try:
                    data = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    data = None
                if data:
                    if written < self.cap:
                        out.write(data[: self.cap - written])
                        out.flush()
                    written += len(data)
                elif stopping:
                    return
                elif data is None:
                    select.select([self._fd, self._wake_r], [], [])
                else:  # no writer yet, or it has closed: the FIFO reads as EOF until one opens it
                    select.select([self._wake_r], [], [], 0.05)

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)
        self.fifo.unlink(missing_ok=True)


def _entry_module(task: TaskRun) -> Path:
    target = str(task.params["EntryModule"])
    try:
        path = task.input_at(target)
    except KeyError:
        raise ExecutorError(f"EntryModule {target} is not the target of any input") from None
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        if len(files) != 1:
            raise ExecutorError(f"EntryModule {target} is a folder of {len(files)} files, not one module")
        path = files[0]
    return path


def _preopens(task: TaskRun) -> list[tuple[Path, str, bool]]:
    """Folders to preopen: each folder input at its target (read-write only for a `local` input that asked),
    each fetched file input through its parent folder (read-only), and each ResultPath read-write."""
    seen: dict[str, tuple[Path, str, bool]] = {}
    entry = str(task.params.get("EntryModule", ""))
    for mount in task.inputs:
        if mount.target == entry and mount.source.is_file():
            continue
        if mount.source.is_dir():
            seen.setdefault(mount.target, (mount.source, mount.target, not mount.read_only))
        elif task.root in mount.source.parents:
            guest = str(PurePosixPath(mount.target).parent)
            seen.setdefault(guest, (mount.source.parent, guest, False))
        else:  # its parent folder would show the task the file's neighbours on the host
            raise ExecutorError(f"WASM tasks mount local inputs as folders: {mount.source} is a file")
    for mount in task.outputs:
        seen[mount.target] = (mount.source, mount.target, True)
    return list(seen.values())
