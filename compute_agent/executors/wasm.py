"""WebAssembly tasks with wasmtime and WASI: argv, env, read-only input preopens, writable ResultPaths,
no network, a memory cap, and epoch interruption for timeouts and cancellation."""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import wasmtime

from compute_agent.errors import ExecutorError, TimeoutExpired
from compute_agent.workspace import TaskRun

_CACHE_SIZE = 32  # compiled modules kept, by digest
_LOADED = 4  # modules each engine keeps loaded, by digest
# the watches' threads, kept for the next tasks; as many as tasks run at once (a watch never waits for a thread)
_WATCHING = ThreadPoolExecutor(max_workers=1 << 16, thread_name_prefix="wasm-watch")


class _Engine:
    """A wasmtime engine, the modules loaded into it, and a linker with WASI. Interrupting a task ticks its
    engine's epoch, which would interrupt every store of the engine: one runs one task at a time."""

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.modules: OrderedDict[str, wasmtime.Module] = OrderedDict()
        self.linker = wasmtime.Linker(self.engine)  # WASI's functions find each task's WASI set-up in its store
        self.linker.define_wasi()


class WasmExecutor:
    name = "wasm"

    def __init__(self) -> None:
        self._compiled: OrderedDict[str, bytes] = OrderedDict()
        self._idle: list[_Engine] = []  # engines no task runs on: as many as ever ran at once
        self._lock = threading.Lock()

    def available(self) -> bool:
        return True

    def reap(self, node_id: str) -> int:
        return 0  # a WASM task dies with its agent

    def run(self, task: TaskRun, cancel: threading.Event) -> int:
        # An engine of its own while it runs, so that interrupting it touches no other task; the engine and the
        # modules loaded into it serve later tasks (compiled code is shared between engines by digest)
        with self._lock:
            engine = self._idle.pop() if self._idle else _Engine()
        try:
            return self._run(engine, task, cancel)
        finally:
            with self._lock:
                self._idle.append(engine)

    def _run(self, loaded: _Engine, task: TaskRun, cancel: threading.Event) -> int:
        engine = loaded.engine
        module = self._module(loaded, *_entry_module(task))
        watch = _Watch(task, engine, cancel)
        try:
            store = wasmtime.Store(engine)
            store.set_wasi(self._wasi(task, *watch.outputs))
            watch.opened()
            if task.memory:
                store.set_limits(memory_size=task.memory)
            store.set_epoch_deadline(1)
            watch.start()
            instance = loaded.linker.instantiate(store, module)
            entry = instance.exports(store).get(task.params.get("Entrypoint") or "_start")
            if not isinstance(entry, wasmtime.Func):
                raise ExecutorError(f"the module exports no function {task.params.get('Entrypoint')!r}")
            task.started()
            entry(store)
            return 0
        except wasmtime.ExitTrap as exc:
            return int(exc.code)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if watch.interrupted == "timeout":
                raise TimeoutExpired(f"Execution timed out after {task.timeout:g}s") from None
            if watch.interrupted == "cancel":
                raise ExecutorError("the execution was cancelled") from None
            raise ExecutorError(f"the WASM module trapped: {exc}") from exc
        finally:
            watch.close()

    def _module(self, loaded: _Engine, data: bytes, name: str) -> wasmtime.Module:
        """Compile once per digest; later runs use the module loaded into their engine, or load the compiled
        code into it."""
        digest = hashlib.sha256(data).hexdigest()
        module = loaded.modules.get(digest)
        if module is None:
            module = self._load(loaded.engine, digest, data, name)
            loaded.modules[digest] = module
            while len(loaded.modules) > _LOADED:
                loaded.modules.popitem(last=False)
        loaded.modules.move_to_end(digest)
        return module

    def _load(self, engine: wasmtime.Engine, digest: str, data: bytes, name: str) -> wasmtime.Module:
        with self._lock:
            compiled = self._compiled.get(digest)
            if compiled is not None:
                self._compiled.move_to_end(digest)
        try:
            if compiled is not None:
                return wasmtime.Module.deserialize(engine, compiled)
            module = wasmtime.Module(engine, data)
        except wasmtime.WasmtimeError as exc:
            raise ExecutorError(f"{name} is not a valid WASM module: {exc}") from exc
        with self._lock:
            self._compiled[digest] = bytes(module.serialize())
            while len(self._compiled) > _CACHE_SIZE:
                self._compiled.popitem(last=False)
        return module

    @staticmethod
    def _wasi(task: TaskRun, stdout: str, stderr: str) -> wasmtime.WasiConfig:
        wasi = wasmtime.WasiConfig()
        entry = str(task.params.get("EntryModule", "main.wasm"))
        wasi.argv = [PurePosixPath(entry).name, *task.params.get("Parameters", [])]
        wasi.env = sorted(task.env.items())
        wasi.stdout_file = stdout
        wasi.stderr_file = stderr
        for host, guest, writable in _preopens(task):
            wasi.preopen_dir(str(host), guest, writable)
        return wasi


class _Watch:
    """A thread for each running task, for what goes on beside it. It copies what the module writes to its two
    output streams to the task's stdout and stderr (TaskOutput, which keeps at most the task's output cap) as it
    comes (the agent's log shipper tails them): each stream is a pipe whose write end
    wasmtime opens by its path (`outputs`, /dev/fd/N), so no file is made for it. And it interrupts the module (one
    epoch tick of its engine) when the execution is cancelled or times out, saying which in `interrupted`. A write
    returns once its bytes are in the pipe, so when the module has returned, `close()` drains the rest; it wakes
    the thread at once (a byte on a pipe of its own) instead of letting it finish a wait."""

    TICK = 0.05  # seconds between looks at the cancel flag, and at a stream with no writer

    def __init__(self, task: TaskRun, engine: wasmtime.Engine, cancel: threading.Event) -> None:
        self.engine, self.cancel = engine, cancel
        self.deadline = time.monotonic() + task.timeout if task.timeout else None
        self.interrupted = ""
        self.streams = (task.stdout, task.stderr)
        self._fds: list[int] = []
        self._writers: list[int] = []  # ours, closed once wasmtime has opened its own: EOF when the store is gone
        for _ in self.streams:
            read, write = os.pipe()
            os.set_blocking(read, False)
            self._fds.append(read)
            self._writers.append(write)
        self.outputs = tuple(f"/dev/fd/{fd}" for fd in self._writers)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._done: Future[None] | None = None

    def start(self) -> None:
        """Once the store's epoch deadline is set: a tick of the engine's epoch before it would be lost."""
        self._done = _WATCHING.submit(self._run)

    def _run(self) -> None:
        try:
            while True:
                stopping = self._stop.is_set()
                self._interrupt_if_due()
                copied, waiting = False, []
                for index, fd in enumerate(self._fds):
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:  # a writer, nothing written yet
                        waiting.append(fd)
                        continue
                    if data:  # b"": every writer has closed
                        copied = True
                        self.streams[index].write(data)
                if copied:
                    continue
                if stopping:
                    return
                select.select([*waiting, self._wake_r], [], [], self._wait())
        finally:
            for stream in self.streams:
                stream.close()

    def _interrupt_if_due(self) -> None:
        if self.interrupted:
            return
        if self.cancel.is_set():
            self.interrupted = "cancel"
        elif self.deadline is not None and time.monotonic() > self.deadline:
            self.interrupted = "timeout"
        else:
            return
        self.engine.increment_epoch()

    def _wait(self) -> float:
        if self.deadline is None or self.interrupted:
            return self.TICK
        return max(0.0, min(self.TICK, self.deadline - time.monotonic()))

    def opened(self) -> None:
        """wasmtime holds its own write ends now."""
        while self._writers:
            os.close(self._writers.pop())

    def close(self) -> None:
        self.opened()
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._done is not None:
            self._done.result()
        for fd in (*self._fds, self._wake_r, self._wake_w):
            os.close(fd)


def _entry_module(task: TaskRun) -> tuple[bytes, str]:
    """The entry module's code and its file name."""
    target = str(task.params["EntryModule"])
    if target in task.in_memory:
        return task.in_memory[target], PurePosixPath(target).name
    try:
        path = task.input_at(target)
    except KeyError:
        raise ExecutorError(f"EntryModule {target} is not the target of any input") from None
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        if len(files) != 1:
            raise ExecutorError(f"EntryModule {target} is a folder of {len(files)} files, not one module")
        path = files[0]
    return path.read_bytes(), path.name


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
