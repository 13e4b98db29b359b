"""An execution's folder on the agent: fetched inputs, the results dir, and what the executors mount.

    <data>/executions/<executionID>/
        inputs/<Target path>        each input, laid out at its target path (an inline WASM entry module is
                                    kept in memory instead: TaskRun.in_memory)
        results/                    archived and uploaded as the execution's result
            stdout  stderr  <ResultPath.Name>/…
            exitCode                written once the task has run, when the results are published

A task whose results are not published keeps its stdout and stderr in memory (up to a point: TaskOutput), and
its folder is made only for what needs one: a ResultPath or a saved input.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute_agent.task_output import IN_MEMORY, TaskOutput


@dataclass(frozen=True)
class Mount:
    """A host path shown to the task at `target`."""

    source: Path
    target: str
    read_only: bool = True


@dataclass
class TaskRun:
    """Everything an executor needs to run one task; built by the agent from an assignment."""

    execution_id: str
    node_id: str
    engine: str
    params: dict[str, Any]
    env: dict[str, str]
    root: Path
    inputs: list[Mount] = field(default_factory=list)
    in_memory: dict[str, bytes] = field(default_factory=dict)  # inputs by target, handed over instead of saved
    outputs: list[Mount] = field(default_factory=list)
    timeout: float | None = None
    cpu: float = 0.0
    memory: int = 0
    pids_limit: int = 256
    max_output_bytes: int = 1 << 30
    started: Callable[[], object] = lambda: None  # the executor calls it (in its thread) once the task itself runs
    stdout: TaskOutput = field(init=False)  # made by create()
    stderr: TaskOutput = field(init=False)

    @property
    def inputs_dir(self) -> Path:
        return self.root / "inputs"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def stdout_path(self) -> Path:
        return self.results_dir / "stdout"

    @property
    def stderr_path(self) -> Path:
        return self.results_dir / "stderr"

    def input_at(self, target: str) -> Path:
        """The host path of the input whose target is `target`."""
        for mount in self.inputs:
            if mount.target == target:
                return mount.source
        raise KeyError(target)

    def create(self, result_paths: list[tuple[str, str]], published: bool = True) -> None:
        """Make the results folders (an input makes the folders it is saved in) and the output streams;
        `result_paths` are (Name, Path) pairs from the spec. Each stream keeps at most `max_output_bytes`; results
        that are not published keep them in memory, up to IN_MEMORY bytes each."""
        in_memory = 0 if published else IN_MEMORY
        self.stdout = TaskOutput(self.stdout_path, in_memory, self.max_output_bytes)
        self.stderr = TaskOutput(self.stderr_path, in_memory, self.max_output_bytes)
        if published or result_paths:
            self.results_dir.mkdir(parents=True, exist_ok=True)
        for name, path in result_paths:
            host = self.results_dir / name
            host.mkdir()
            host.chmod(0o777)  # the task may run as any user inside its container
            self.outputs.append(Mount(host, path, read_only=False))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
