"""The WASM executor run directly on a TaskRun laid out in tmp_path, with real wasmtime and the probe module
(tests/fixtures/wasm/probe.c)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from compute_agent.errors import ExecutorError, TimeoutExpired
from compute_agent.executors.wasm import WasmExecutor
from compute_agent.task_output import IN_MEMORY
from compute_agent.workspace import Mount, TaskRun
from tests.conftest import FIXTURES, wait_for

PROBE = FIXTURES / "wasm" / "probe.wasm"
LOOP = FIXTURES / "wasm" / "loop.wat"
TICK = FIXTURES / "wasm" / "tick.wat"  # bench/dispatch.py's job, assembled as the benchmark assembles it
ENTRY = "/app/probe.wasm"

# Grows its memory by 64 pages (4 MiB) and traps (unreachable) when the growth is refused.
GROW_WAT = b"""
(module
  (memory 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 64)) (i32.const -1))
      (then unreachable))))
"""


def make_task(tmp_path: Path, *args: str, module: Path | bytes = PROBE, env: dict[str, str] | None = None,
              files: dict[str, bytes] | None = None, folders: dict[str, dict[str, bytes]] | None = None,
              outputs: tuple[tuple[str, str], ...] = (("outputs", "/outputs"),), name: str = "exec",
              **options: Any) -> TaskRun:
    """A task laid out the way the agent lays one out: each input under inputs/<target>, read-only."""
    task = TaskRun(execution_id=f"{name}-id", node_id="node-1", engine="wasm",
                   params={"EntryModule": ENTRY, "Parameters": list(args)}, env=env or {}, root=tmp_path / name,
                   **options)
    task.create(list(outputs))
    inputs = {ENTRY: module if isinstance(module, bytes) else module.read_bytes()} | (files or {})
    for target, data in inputs.items():
        host = task.inputs_dir / target.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data)
        task.inputs.append(Mount(host, target))
    for target, content in (folders or {}).items():
        host = task.inputs_dir / target.lstrip("/")
        host.mkdir(parents=True)
        for filename, data in content.items():
            (host / filename).write_bytes(data)
        task.inputs.append(Mount(host, target))
    return task


@pytest.fixture
def executor() -> WasmExecutor:
    return WasmExecutor()


def run(executor: WasmExecutor, task: TaskRun) -> int:
    return executor.run(task, threading.Event())


def outputs_of(task: TaskRun) -> tuple[bytes, bytes]:
    return task.stdout.read(), task.stderr.read()


def test_argv_reaches_the_module(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "echo", "hello", "two words", "ünïcødé")
    assert run(executor, task) == 0
    assert outputs_of(task) == ("hello two words ünïcødé\n".encode(), b"")


def test_the_env_is_exactly_the_tasks(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "env", env={"GREETING": "hi there", "EMPTY": "", "WITH_EQUALS": "a=b"})
    assert run(executor, task) == 0
    # nothing of the agent's own environment (PATH, HOME, …) leaks into the module
    assert task.stdout.read().decode().splitlines() == ["EMPTY=", "GREETING=hi there", "WITH_EQUALS=a=b"]


@pytest.mark.parametrize("code", [0, 3, 125])  # WASI exit statuses stop at 125
def test_the_exit_code_is_a_result_not_an_error(executor: WasmExecutor, tmp_path: Path, code: int) -> None:
    task = make_task(tmp_path, "exit", str(code))
    assert run(executor, task) == code
    assert outputs_of(task) == (b"", f"exiting with {code}\n".encode())


def test_stdout_and_stderr_are_separate_files_in_the_results_dir(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "cat", "/inputs/missing.txt")
    assert run(executor, task) == 2
    assert task.stdout_path == task.results_dir / "stdout"
    assert task.stderr_path == task.results_dir / "stderr"
    stdout, stderr = outputs_of(task)
    assert stdout == b""
    assert stderr.startswith(b"cat: /inputs/missing.txt: ")
    # results to publish: the streams are the files archived with them, the empty one too
    assert (task.stdout_path.read_bytes(), task.stderr_path.read_bytes()) == (stdout, stderr)


def unpublished_task(tmp_path: Path, *args: str) -> TaskRun:
    """A task the agent runs for results it does not publish: its module handed over in memory, no ResultPath."""
    task = TaskRun(execution_id="unpublished-id", node_id="node-1", engine="wasm",
                   params={"EntryModule": ENTRY, "Parameters": list(args)}, env={}, root=tmp_path / "unpublished")
    task.create([], published=False)
    task.in_memory[ENTRY] = PROBE.read_bytes()
    return task


def test_unpublished_output_is_kept_in_memory_and_nothing_is_made_on_disk(executor: WasmExecutor,
                                                                           tmp_path: Path) -> None:
    task = unpublished_task(tmp_path, "echo", "hello", "there")
    assert run(executor, task) == 0
    assert outputs_of(task) == (b"hello there\n", b"")
    assert not task.root.exists()


def test_unpublished_output_past_the_memory_limit_goes_on_in_its_file(executor: WasmExecutor, tmp_path: Path) -> None:
    size = IN_MEMORY + 300_000
    task = unpublished_task(tmp_path, "big", str(size))
    assert run(executor, task) == 0
    expected = ((b"x" * 64 + b"\n") * (size // 65 + 1))[:size]
    assert task.stdout.read() == expected
    assert task.stdout_path.read_bytes() == expected
    assert not task.stderr_path.exists()


def test_large_output_below_the_cap_is_kept_byte_for_byte(executor: WasmExecutor, tmp_path: Path) -> None:
    size = 200_000
    task = make_task(tmp_path, "big", str(size))
    assert run(executor, task) == 0
    expected = (b"x" * 64 + b"\n") * (size // 65 + 1)
    assert task.stdout.read() == expected[:size]


def test_output_over_max_output_bytes_is_capped_like_docker(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "big", "200000", max_output_bytes=1000)
    assert run(executor, task) == 0
    assert task.stdout.read() == ((b"x" * 64 + b"\n") * 16)[:1000]


def test_inputs_are_readable(executor: WasmExecutor, tmp_path: Path) -> None:
    data = b"line one\n\x00binary\xff\n"
    task = make_task(tmp_path, "cat", "/inputs/data.bin", files={"/inputs/data.bin": data})
    assert run(executor, task) == 0
    assert outputs_of(task) == (data, b"")


def test_a_file_input_cannot_be_overwritten(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "write", "/inputs/data.txt", "overwritten", files={"/inputs/data.txt": b"original\n"})
    assert run(executor, task) == 3
    stdout, stderr = outputs_of(task)
    assert stdout == b""
    assert stderr.startswith(b"write failed: ")
    assert task.input_at("/inputs/data.txt").read_bytes() == b"original\n"


def test_nothing_can_be_created_in_an_input_folder(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "write", "/data/new.txt", "sneaky", folders={"/data": {"a.txt": b"a", "b.txt": b"b"}})
    assert run(executor, task) == 3
    assert task.stderr.read().startswith(b"write failed: ")
    assert sorted(p.name for p in task.input_at("/data").iterdir()) == ["a.txt", "b.txt"]


def test_a_folder_input_is_listed_at_its_target(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "ls", "/data", folders={"/data": {"b.txt": b"b", "a.txt": b"a"}})
    assert run(executor, task) == 0
    assert outputs_of(task) == (b"a.txt\nb.txt\n", b"")


@pytest.mark.parametrize("path", ["/etc/passwd", "/app/probe.wasm", "/../../../../etc/passwd"])
def test_nothing_outside_the_preopens_is_visible(executor: WasmExecutor, tmp_path: Path, path: str) -> None:
    task = make_task(tmp_path, "cat", path)
    assert run(executor, task) == 2
    assert task.stdout.read() == b""


def test_result_paths_are_writable_and_land_under_results_name(executor: WasmExecutor, tmp_path: Path) -> None:
    outputs = (("outputs", "/outputs"), ("metrics", "/work/metrics"))
    first = make_task(tmp_path, "write", "/outputs/answer.txt", "forty-two", outputs=outputs, name="first")
    assert run(executor, first) == 0
    assert first.stdout.read().decode() == "wrote /outputs/answer.txt\n"
    assert (first.results_dir / "outputs" / "answer.txt").read_text() == "forty-two\n"
    assert list((first.results_dir / "metrics").iterdir()) == []

    second = make_task(tmp_path, "write", "/work/metrics/m.txt", "0.99", outputs=outputs, name="second")
    assert run(executor, second) == 0
    assert (second.results_dir / "metrics" / "m.txt").read_text() == "0.99\n"
    assert list((second.results_dir / "outputs").iterdir()) == []


def test_an_entry_module_folder_of_one_file_is_run(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "echo", "from a folder", module=b"")
    entry = task.input_at(ENTRY)
    entry.unlink()
    entry.mkdir()
    (entry / "downloaded.wasm").write_bytes(PROBE.read_bytes())
    assert run(executor, task) == 0
    assert task.stdout.read().decode() == "from a folder\n"


def test_an_entry_module_handed_over_in_memory_is_run_without_a_file(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "ls", "/app", files={"/app/data.txt": b"x"})
    task.input_at(ENTRY).unlink()
    task.inputs = [mount for mount in task.inputs if mount.target != ENTRY]
    task.in_memory[ENTRY] = PROBE.read_bytes()
    assert run(executor, task) == 0
    assert outputs_of(task) == (b"data.txt\n", b"")


def test_the_task_says_it_started_once_just_before_the_module_runs(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, "now")
    calls: list[int] = []
    task.started = lambda: calls.append(time.time_ns())
    assert run(executor, task) == 0
    assert len(calls) == 1
    assert calls[0] <= int(outputs_of(task)[0])  # the module's own clock, read as it began


def test_a_module_that_cannot_start_never_says_it_started(executor: WasmExecutor, tmp_path: Path) -> None:
    task = make_task(tmp_path, module=b"\x00asm not really")
    calls: list[int] = []
    task.started = lambda: calls.append(1)
    with pytest.raises(ExecutorError):
        run(executor, task)
    assert calls == []


@pytest.mark.parametrize(("args", "stdout", "code"), [
    (("echo", "a", "bb", "ccc"), b"a bb ccc\n", 0),
    (("echo",), b"\n", 0),
    (("nope",), b"", 64),
    ((), b"", 64),
])
def test_the_benchmarks_tick_module_echoes_and_refuses_what_it_does_not_know(
        executor: WasmExecutor, tmp_path: Path, args: tuple[str, ...], stdout: bytes, code: int) -> None:
    task = make_task(tmp_path, *args, module=bytes(wasmtime.wat2wasm(TICK.read_text())))
    assert run(executor, task) == code
    assert outputs_of(task) == (stdout, b"")


def test_the_benchmarks_tick_module_prints_the_wall_clock_in_nanoseconds(executor: WasmExecutor,
                                                                         tmp_path: Path) -> None:
    module = bytes(wasmtime.wat2wasm(TICK.read_text()))
    assert len(module) < 1024  # the point of it: a job spec of about a kilobyte
    task = make_task(tmp_path, "now", module=module)
    before = time.time_ns()
    assert run(executor, task) == 0
    after = time.time_ns()
    stdout, stderr = outputs_of(task)
    assert stdout.endswith(b"\n") and stderr == b""
    assert before <= int(stdout) <= after


@pytest.mark.parametrize(("module", "params", "message"), [
    (b"\x00asm not really", {}, "is not a valid WASM module"),
    (LOOP, {"EntryModule": "/elsewhere.wasm"}, "is not the target of any input"),
    (LOOP, {"Entrypoint": "no_such_export"}, "exports no function 'no_such_export'"),
])
def test_what_the_module_cannot_help_is_a_system_error(executor: WasmExecutor, tmp_path: Path, module: Path | bytes,
                                                       params: dict[str, str], message: str) -> None:
    task = make_task(tmp_path, module=module)
    task.params |= params
    with pytest.raises(ExecutorError, match=message) as raised:
        run(executor, task)
    assert not isinstance(raised.value, TimeoutExpired)


def test_the_memory_cap_refuses_growth(executor: WasmExecutor, tmp_path: Path) -> None:
    unlimited = make_task(tmp_path, module=GROW_WAT, name="unlimited")
    assert run(executor, unlimited) == 0
    capped = make_task(tmp_path, module=GROW_WAT, memory=1 << 20, name="capped")
    with pytest.raises(ExecutorError, match="the WASM module trapped"):
        run(executor, capped)


def _run_in_thread(executor: WasmExecutor, task: TaskRun, cancel: threading.Event) -> tuple[threading.Thread,
                                                                                           dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        started = time.monotonic()
        try:
            outcome["code"] = executor.run(task, cancel)
        except BaseException as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.timeout(30)
@pytest.mark.parametrize("module", [PROBE, LOOP], ids=["probe-spin", "loop.wat"])
def test_a_timeout_interrupts_a_spinning_module(executor: WasmExecutor, tmp_path: Path, module: Path) -> None:
    task = make_task(tmp_path, "spin", module=module, timeout=0.5)
    thread, outcome = _run_in_thread(executor, task, threading.Event())
    thread.join(10)
    assert not thread.is_alive(), "the module was not interrupted"
    error = outcome.get("error")
    assert isinstance(error, TimeoutExpired), outcome
    assert str(error) == "Execution timed out after 0.5s"
    assert 0.5 <= outcome["elapsed"] < 3.0


@pytest.mark.timeout(30)
def test_a_cancel_that_comes_before_the_module_starts_is_not_lost(executor: WasmExecutor, tmp_path: Path) -> None:
    """The cancel is seen (and the engine's epoch ticked) as the task is being set up: the tick must come once the
    store's deadline is set, or the module spins on."""
    cancel = threading.Event()
    cancel.set()
    for attempt in range(10):  # a watch thread left idle by the task before is the quickest to see it
        assert run(executor, make_task(tmp_path, "echo", "x", name=f"before-{attempt}")) == 0
        thread, outcome = _run_in_thread(executor, make_task(tmp_path, module=LOOP, name=f"loop-{attempt}"), cancel)
        thread.join(10)
        assert not thread.is_alive(), f"the cancel was lost: the module spins on (attempt {attempt})"
        assert str(outcome.get("error")) == "the execution was cancelled", outcome


@pytest.mark.timeout(30)
def test_cancel_interrupts_a_spinning_module(executor: WasmExecutor, tmp_path: Path) -> None:
    cancel = threading.Event()
    task = make_task(tmp_path, "spin")
    thread, outcome = _run_in_thread(executor, task, cancel)
    thread.join(0.3)
    assert thread.is_alive(), f"spin returned by itself: {outcome}"
    cancel.set()
    thread.join(10)
    assert not thread.is_alive(), "the module was not interrupted"
    error = outcome.get("error")
    assert isinstance(error, ExecutorError) and not isinstance(error, TimeoutExpired), outcome
    assert str(error) == "the execution was cancelled"


@pytest.mark.timeout(30)
def test_interrupting_one_running_module_leaves_the_others_running(executor: WasmExecutor, tmp_path: Path) -> None:
    cancel_first, cancel_second = threading.Event(), threading.Event()
    first, first_outcome = _run_in_thread(executor, make_task(tmp_path, "spin", name="first"), cancel_first)
    second, second_outcome = _run_in_thread(executor, make_task(tmp_path, "spin", name="second", timeout=1.5),
                                            cancel_second)
    cancel_first.set()
    first.join(10)
    assert str(first_outcome.get("error")) == "the execution was cancelled", first_outcome
    assert second.is_alive(), f"the second module stopped with the first: {second_outcome}"
    second.join(10)
    assert isinstance(second_outcome.get("error"), TimeoutExpired), second_outcome
    assert 1.5 <= second_outcome["elapsed"] < 5.0


@pytest.fixture
def module_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts compilations (Module(...)) and cache loads (Module.deserialize) made by the executor."""
    counts = {"compiled": 0, "deserialized": 0}
    real_init, real_deserialize = wasmtime.Module.__init__, wasmtime.Module.deserialize

    def init(self: wasmtime.Module, engine: wasmtime.Engine, wasm: str | bytes) -> None:
        counts["compiled"] += 1
        real_init(self, engine, wasm)

    def deserialize(engine: wasmtime.Engine, encoded: bytes | bytearray) -> wasmtime.Module:
        counts["deserialized"] += 1
        return real_deserialize(engine, encoded)

    monkeypatch.setattr(wasmtime.Module, "__init__", init)
    monkeypatch.setattr(wasmtime.Module, "deserialize", staticmethod(deserialize))
    yield counts


@pytest.mark.timeout(30)
def test_compiled_modules_are_reused_by_digest(executor: WasmExecutor, tmp_path: Path,
                                               module_spy: dict[str, int]) -> None:
    first = make_task(tmp_path, "echo", "one", name="first")
    assert run(executor, first) == 0
    assert module_spy == {"compiled": 1, "deserialized": 0}

    # the same bytes under another name and execution: the module its engine loaded runs again
    second = make_task(tmp_path, "echo", "two", name="second")
    assert run(executor, second) == 0
    assert second.stdout.read().decode() == "two\n"
    assert module_spy == {"compiled": 1, "deserialized": 0}

    # while another module spins on that engine, the same bytes run on an engine of their own, into which the
    # compiled code is loaded
    cancel = threading.Event()
    thread, outcome = _run_in_thread(executor, make_task(tmp_path, module=LOOP, name="loop"), cancel)
    wait_for(lambda: module_spy["compiled"] == 2, timeout=10, what="the loop module compiled")
    third = make_task(tmp_path, "echo", "three", name="third")
    assert run(executor, third) == 0
    assert third.stdout.read().decode() == "three\n"
    assert module_spy == {"compiled": 2, "deserialized": 1}
    cancel.set()
    thread.join(10)
    assert str(outcome.get("error")) == "the execution was cancelled", outcome

    # the engine that interrupted the loop runs the next task, uninterrupted, with the module it had loaded
    fourth = make_task(tmp_path, "echo", "four", name="fourth")
    assert run(executor, fourth) == 0
    assert fourth.stdout.read().decode() == "four\n"
    assert module_spy == {"compiled": 2, "deserialized": 1}

    # other bytes are another digest
    other = make_task(tmp_path, module=GROW_WAT, name="other")
    assert run(executor, other) == 0
    assert module_spy == {"compiled": 3, "deserialized": 1}
