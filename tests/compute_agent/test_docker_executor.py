"""The Docker executor run directly on a TaskRun laid out in tmp_path, against the real engine and the test image
(a static busybox: scripts/docker-up)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from docker.errors import DockerException

from compute_agent.errors import ExecutorError, TimeoutExpired
from compute_agent.executors.docker import EXECUTION_LABEL, NODE_LABEL, DockerExecutor
from compute_agent.workspace import Mount, TaskRun
from tests.conftest import TEST_IMAGE, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

MiB = 1 << 20


def make_task(tmp_path: Path, script: str, *, image: str = TEST_IMAGE, env: dict[str, str] | None = None,
              files: dict[str, bytes] | None = None, folders: dict[str, dict[str, bytes]] | None = None,
              outputs: tuple[tuple[str, str], ...] = (("outputs", "/outputs"),), params: dict[str, Any] | None = None,
              **options: Any) -> TaskRun:
    """`sh -c script` in a task laid out as the agent lays one out (inputs under inputs/<target>, read-only)."""
    execution_id = f"test-{uuid.uuid4().hex}"
    task = TaskRun(execution_id=execution_id, node_id="node-under-test", engine="docker",
                   params={"Image": image, "Entrypoint": ["/bin/sh", "-c"], "Parameters": [script]} | (params or {}),
                   env=env or {}, root=tmp_path / execution_id, **options)
    task.create(list(outputs))
    for target, data in (files or {}).items():
        host = task.inputs_dir / target.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data)
        task.inputs.append(Mount(host, target))
    for target, content in (folders or {}).items():
        host = task.inputs_dir / target.lstrip("/")
        host.mkdir(parents=True)
        for name, data in content.items():
            (host / name).write_bytes(data)
        task.inputs.append(Mount(host, target))
    return task


@pytest.fixture(scope="module")
def executor(docker_engine: Any) -> DockerExecutor:
    executor = DockerExecutor()
    assert executor.available()
    return executor


def containers_of(docker_engine: Any, task: TaskRun) -> list[dict[str, Any]]:
    found = docker_engine.api.containers(all=True, filters={"label": f"{EXECUTION_LABEL}={task.execution_id}"})
    return list(found)


def run(executor: DockerExecutor, docker_engine: Any, task: TaskRun) -> int:
    code = executor.run(task, threading.Event())
    assert containers_of(docker_engine, task) == [], "the container was left behind"
    return code


class Running:
    """The executor run in a thread, so a test can look at the container while it runs."""

    def __init__(self, executor: DockerExecutor, task: TaskRun) -> None:
        self.task = task
        self.cancel = threading.Event()
        self.code: int | None = None
        self.error: BaseException | None = None
        self.elapsed = 0.0
        self._thread = threading.Thread(target=self._run, args=(executor,), daemon=True)
        self._thread.start()

    def _run(self, executor: DockerExecutor) -> None:
        started = time.monotonic()
        try:
            self.code = executor.run(self.task, self.cancel)
        except BaseException as exc:
            self.error = exc
        self.elapsed = time.monotonic() - started

    def container(self, docker_engine: Any) -> Any:
        """The task's container once it runs."""

        def running() -> Any:
            found = containers_of(docker_engine, self.task)
            if found and found[0]["State"] == "running":
                return docker_engine.containers.get(found[0]["Id"])
            assert self._thread.is_alive(), f"the run ended early: {self.code} {self.error!r}"
            return None

        return wait_for(running, timeout=30, what="the task's container to run")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the executor did not return within {timeout}s"


def test_stdout_stderr_and_exit_code(executor: DockerExecutor, docker_engine: Any, tmp_path: Path) -> None:
    task = make_task(tmp_path, r"printf 'out\nsecond line'; printf 'err\n' >&2; exit 3")
    started: list[int] = []
    task.started = lambda: started.append(1)
    assert run(executor, docker_engine, task) == 3
    assert started == [1], "the task says it started, once, when its container has"
    assert task.stdout.read() == b"out\nsecond line"
    assert task.stderr.read() == b"err\n"


def test_binary_output_is_kept_byte_for_byte(executor: DockerExecutor, docker_engine: Any, tmp_path: Path) -> None:
    task = make_task(tmp_path, r"printf '\377\376\000\001 binary'")
    assert run(executor, docker_engine, task) == 0
    assert task.stdout.read() == b"\xff\xfe\x00\x01 binary"


def test_environment_and_parameters(executor: DockerExecutor, docker_engine: Any, tmp_path: Path) -> None:
    task = make_task(tmp_path, 'echo "$GREETING|$FROM_PARAMS|$0|$1"; pwd', env={"GREETING": "hi there"},
                     params={"EnvironmentVariables": ["FROM_PARAMS=a=b", "GREETING=overridden by the task env"],
                             "Parameters": ['echo "$GREETING|$FROM_PARAMS|$0|$1"; pwd', "zero", "one"],
                             "WorkingDirectory": "/tmp"})
    assert run(executor, docker_engine, task) == 0
    assert task.stdout.read().decode() == "hi there|a=b|zero|one\n/tmp\n"


def test_output_over_max_output_bytes_is_cut_and_the_task_still_completes(executor: DockerExecutor,
                                                                          docker_engine: Any, tmp_path: Path) -> None:
    line = "0123456789012345678901234567890123456789\n"
    task = make_task(tmp_path, f"i=0; while [ $i -lt 3000 ]; do echo {line.strip()}; echo E{line.strip()} >&2; "
                               "i=$((i+1)); done; exit 4", max_output_bytes=1000)
    assert run(executor, docker_engine, task) == 4
    assert task.stdout.read().decode() == (line * 30)[:1000]
    assert task.stderr.read().decode() == (("E" + line) * 30)[:1000]


def test_no_network_but_loopback(executor: DockerExecutor, docker_engine: Any, tmp_path: Path) -> None:
    # (an engine started with --bridge=none shows only lo to every container: the NetworkMode check in
    # test_the_running_container_is_locked_down_and_removed_after_cancel is the one that tells them apart)
    task = make_task(tmp_path, "tail -n +3 /proc/net/dev | cut -d: -f1; echo; ls /sys/class/net")
    assert run(executor, docker_engine, task) == 0
    dev, listed = task.stdout.read().decode().split("\n\n")
    assert dev.split() == ["lo"]
    assert listed.split() == ["lo"]


def test_limits_are_applied_to_the_cgroup(executor: DockerExecutor, docker_engine: Any, tmp_path: Path) -> None:
    v1 = ("/sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"
          " /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")
    v2 = "/sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.swap.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max"
    task = make_task(tmp_path, f"if [ -d /sys/fs/cgroup/memory ]; then echo v1; cat {v1}; else echo v2; cat {v2}; fi",
                     memory=64 * MiB, pids_limit=77, cpu=0.25)
    assert run(executor, docker_engine, task) == 0
    version, *values = task.stdout.read().decode().split()
    if version == "v1":
        assert values == [str(64 * MiB), str(64 * MiB), "77", "25000", "100000"]
    else:
        assert values == [str(64 * MiB), "0", "77", "25000", "100000"]


@pytest.mark.parametrize(("limit", "code", "seconds"), [(12, 2, 60), (64, 0, 0.5)])
def test_the_pids_limit_refuses_forks_over_it(executor: DockerExecutor, docker_engine: Any, tmp_path: Path,
                                              limit: int, code: int, seconds: float) -> None:
    # the shell and 11 sleeps fill a limit of 12, so the 12th fork fails (and ash gives up with status 2, which
    # ends the container and its sleeps): sleeps that outlast any delay between the forks on a loaded machine.
    # (Not a smaller limit: the runtime's own threads count too while it starts the container.)
    task = make_task(tmp_path, f"for i in $(seq 12); do sleep {seconds} & done; wait; echo finished",
                     pids_limit=limit)
    assert run(executor, docker_engine, task) == code
    if code:
        assert "can't fork" in task.stderr.read().decode()
        assert task.stdout.read().decode() == ""
    else:
        assert task.stdout.read().decode() == "finished\n"


def test_capabilities_are_dropped_and_privileges_cannot_be_gained(executor: DockerExecutor, docker_engine: Any,
                                                                  tmp_path: Path) -> None:
    task = make_task(tmp_path, "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status;"
                               " chown 1234 /tmp; echo chown=$?")
    assert run(executor, docker_engine, task) == 0
    *lines, chown = task.stdout.read().decode().splitlines()
    assert chown == "chown=1"  # root without CAP_CHOWN
    fields = dict(line.split(":\t") for line in lines)
    assert fields == {"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
                      "CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1"}
    assert "Operation not permitted" in task.stderr.read().decode()


def test_inputs_are_read_only_and_result_paths_writable(executor: DockerExecutor, docker_engine: Any,
                                                        tmp_path: Path) -> None:
    task = make_task(
        tmp_path,
        "cat /inputs/data.txt /data/a.txt;"
        " echo overwritten > /inputs/data.txt; echo file=$?;"
        " echo new > /data/new.txt; echo folder=$?;"
        " echo forty-two > /outputs/answer.txt && mkdir /outputs/sub && echo deep > /outputs/sub/deep.txt",
        files={"/inputs/data.txt": b"original\n"}, folders={"/data": {"a.txt": b"folder file\n"}},
        outputs=(("outputs", "/outputs"), ("empty", "/empty")),
    )
    assert run(executor, docker_engine, task) == 0
    assert task.stdout.read().decode() == "original\nfolder file\nfile=1\nfolder=1\n"
    assert task.stderr.read().decode().count("Read-only file system") == 2
    assert task.input_at("/inputs/data.txt").read_bytes() == b"original\n"
    assert sorted(p.name for p in task.input_at("/data").iterdir()) == ["a.txt"]
    assert (task.results_dir / "outputs" / "answer.txt").read_text() == "forty-two\n"
    assert (task.results_dir / "outputs" / "sub" / "deep.txt").read_text() == "deep\n"
    assert list((task.results_dir / "empty").iterdir()) == []


def test_the_running_container_is_locked_down_and_removed_after_cancel(executor: DockerExecutor, docker_engine: Any,
                                                                        tmp_path: Path) -> None:
    task = make_task(tmp_path, "sleep 60", files={"/inputs/data.txt": b"x"}, memory=64 * MiB, pids_limit=77, cpu=0.5)
    running = Running(executor, task)
    container = running.container(docker_engine)
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert (host["Memory"], host["MemorySwap"], host["PidsLimit"], host["NanoCpus"]) == (64 * MiB, 64 * MiB, 77,
                                                                                         500_000_000)
    mounts = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
    assert mounts == {"/inputs/data.txt": False, "/outputs": True}
    assert container.labels[NODE_LABEL] == "node-under-test"

    running.cancel.set()
    running.join(30)
    assert isinstance(running.error, ExecutorError) and not isinstance(running.error, TimeoutExpired)
    assert str(running.error) == "the execution was cancelled"
    assert running.elapsed < 30  # not the 60 s of the sleep
    assert containers_of(docker_engine, task) == []


def test_a_timeout_kills_the_task_and_removes_the_container(executor: DockerExecutor, docker_engine: Any,
                                                            tmp_path: Path) -> None:
    task = make_task(tmp_path, "sleep 60", timeout=1)
    running = Running(executor, task)
    running.container(docker_engine)
    running.join(30)
    assert isinstance(running.error, TimeoutExpired)
    assert str(running.error) == "Execution timed out after 1s"
    assert 1 <= running.elapsed < 10
    assert containers_of(docker_engine, task) == []


def test_a_failing_task_is_removed_too(executor: DockerExecutor, docker_engine: Any, tmp_path: Path) -> None:
    task = make_task(tmp_path, "echo dying >&2; sh -c 'kill -9 $$'; exit $?")
    assert run(executor, docker_engine, task) == 137
    assert task.stderr.read().decode().startswith("dying\n")


def test_a_container_that_cannot_start_is_a_system_error_and_removed(executor: DockerExecutor, docker_engine: Any,
                                                                    tmp_path: Path) -> None:
    task = make_task(tmp_path, "", params={"Entrypoint": ["/no/such/program"]})
    started: list[int] = []
    task.started = lambda: started.append(1)
    with pytest.raises(ExecutorError, match="docker failed while running the task") as raised:
        executor.run(task, threading.Event())
    assert started == []
    assert not isinstance(raised.value, TimeoutExpired)
    assert containers_of(docker_engine, task) == []


def test_a_missing_image_is_a_system_error(executor: DockerExecutor, docker_engine: Any, tmp_path: Path) -> None:
    task = make_task(tmp_path, "true", image="shoal-test/no-such-image:404")
    with pytest.raises(ExecutorError, match="could not pull image shoal-test/no-such-image:404") as raised:
        executor.run(task, threading.Event())
    assert not isinstance(raised.value, TimeoutExpired)
    assert containers_of(docker_engine, task) == []


def test_pulling_does_not_count_against_the_timeout(executor: DockerExecutor, docker_engine: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A pull that takes longer than the whole timeout (the image is local, so the delay stands in for the
    # download). The task itself needs more than one 0.5 s wait round but less than its timeout, so it fails
    # only if the deadline started before the pull.
    real = DockerExecutor._ensure_image
    pulls: list[str] = []

    def slow_pull(client: Any, image: str) -> None:
        pulls.append(image)
        threading.Event().wait(2.0)
        real(client, image)

    monkeypatch.setattr(DockerExecutor, "_ensure_image", staticmethod(slow_pull))
    task = make_task(tmp_path, "sleep 0.7; echo done", timeout=1.5)
    assert run(executor, docker_engine, task) == 0
    assert pulls == [TEST_IMAGE]
    assert task.stdout.read().decode() == "done\n"


def test_reap_removes_only_this_nodes_leftovers(executor: DockerExecutor, docker_engine: Any) -> None:
    node = f"node-{uuid.uuid4().hex}"
    mine = docker_engine.containers.create(TEST_IMAGE, ["sleep", "60"], labels={NODE_LABEL: node})
    other = docker_engine.containers.create(TEST_IMAGE, ["sleep", "60"], labels={NODE_LABEL: node + "-other"})
    try:
        mine.start()
        assert executor.reap(node) == 1
        left = docker_engine.api.containers(all=True, filters={"label": NODE_LABEL})
        ids = {c["Id"] for c in left}
        assert mine.id not in ids
        assert other.id in ids
        assert executor.reap(node) == 0
    finally:
        for container in (mine, other):
            with contextlib.suppress(DockerException):
                container.remove(force=True)
