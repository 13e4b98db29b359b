"""Executors: one small interface, one module per engine.

`run(task, cancel)` runs the task to its end and returns its exit code, having written `stdout`, `stderr`
and the ResultPath folders into the task's results dir; it calls `task.started()` once the task itself runs. It
raises `ExecutorError` for anything that is not the task's own doing, and stops early when `cancel` is set.
"""

from __future__ import annotations

import threading
from typing import Protocol

from compute_agent.workspace import TaskRun


class Executor(Protocol):
    name: str

    def available(self) -> bool: ...

    def run(self, task: TaskRun, cancel: threading.Event) -> int: ...

    def reap(self, node_id: str) -> int:
        """Remove what an earlier run of this node left behind; returns how many things were removed."""
        ...


def default_executors() -> dict[str, Executor]:
    from compute_agent.executors.docker import DockerExecutor
    from compute_agent.executors.wasm import WasmExecutor

    return {"docker": DockerExecutor(), "wasm": WasmExecutor()}
