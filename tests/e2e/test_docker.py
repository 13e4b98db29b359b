"""Docker jobs end to end: a real gateway process, a real agent process, a real Docker engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compute_agent.executors.docker import EXECUTION_LABEL
from tests.conftest import Gateway, one_agent_stack, wait_for
from tests.specs import docker_job, inline


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_engine: Any) -> Iterator[Gateway]:
    yield from one_agent_stack(tmp_path_factory, "docker", "--max-executions", "2")


def leftover_containers(docker_engine: Any, execution_id: str) -> list[Any]:
    return list(docker_engine.api.containers(all=True, filters={"label": f"{EXECUTION_LABEL}={execution_id}"}))


def test_hello_world_publishes_stdout_and_removes_the_container(stack: Gateway, docker_engine: Any,
                                                                 tmp_path: Path) -> None:
    job, execution = stack.run(docker_job("echo hello from docker; echo oops >&2"))
    assert job["State"]["StateType"] == "Completed", job
    assert execution["RunOutput"]["Stdout"] == "hello from docker\n"
    out = stack.download(job["ID"], tmp_path / "out")
    assert (out / "stdout").read_bytes() == b"hello from docker\n"
    assert (out / "stderr").read_bytes() == b"oops\n"
    assert (out / "exitCode").read_text() == "0"
    assert leftover_containers(docker_engine, execution["ID"]) == []


def test_env_inputs_and_outputs(stack: Gateway, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    job, execution = stack.run(docker_job(
        "cp /inputs/data.bin /outputs/copy.bin && env | sort > /outputs/env.txt",
        inputs=[inline(data, "/inputs/data.bin")], outputs={"outputs": "/outputs"}, env={"GREETING": "hi"},
    ))
    assert execution["RunOutput"]["ExitCode"] == 0, execution
    out = stack.download(job["ID"], tmp_path / "out")
    assert (out / "outputs" / "copy.bin").read_bytes() == data
    env = dict(line.split("=", 1) for line in (out / "outputs" / "env.txt").read_text().splitlines() if "=" in line)
    assert env["GREETING"] == "hi"
    assert env["SHOAL_JOB_ID"] == env["BACALHAU_JOB_ID"] == job["ID"]
    assert env["SHOAL_EXECUTION_ID"] == execution["ID"]
    assert env["SHOAL_PARTITION_INDEX"] == "0" and env["BACALHAU_PARTITION_COUNT"] == "1"
    assert env["SHOAL_NODE_ID"] == execution["NodeID"]


def test_inputs_are_read_only(stack: Gateway) -> None:
    _, execution = stack.run(docker_job("echo x > /inputs/data.txt", inputs=[inline(b"data", "/inputs/data.txt")]))
    assert execution["RunOutput"]["ExitCode"] != 0
    assert "Read-only file system" in execution["RunOutput"]["stderr"]


def test_no_network_and_limits(stack: Gateway) -> None:
    cgroup_v1 = ("/sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
                 " /sys/fs/cgroup/pids/pids.max")
    cgroup_v2 = "/sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max"
    job = docker_job(f"ls /sys/class/net; echo; cat {cgroup_v1} 2>/dev/null || cat {cgroup_v2}")
    job["Tasks"][0]["Resources"] = {"Memory": "64Mb", "CPU": "250m"}
    _, execution = stack.run(job)
    interfaces, limits = execution["RunOutput"]["Stdout"].split("\n\n")
    assert interfaces.split() == ["lo"]
    memory, cpu, pids = limits.splitlines()[:3]
    assert int(memory) == 64_000_000 // 4096 * 4096
    assert cpu.split()[0] == "25000"  # quota per 100 ms period: a quarter of a core
    assert pids == "256"


def test_capabilities_are_dropped(stack: Gateway) -> None:
    _, execution = stack.run(docker_job("grep CapEff /proc/self/status"))
    assert execution["RunOutput"]["Stdout"].split() == ["CapEff:", "0000000000000000"]


def test_non_zero_exit_completes(stack: Gateway) -> None:
    job, execution = stack.run(docker_job("exit 7"))
    assert job["State"]["StateType"] == "Completed"
    assert execution["RunOutput"]["ExitCode"] == 7


def test_timeout_fails_and_the_container_is_removed(stack: Gateway, docker_engine: Any) -> None:
    job, execution = stack.run(docker_job("sleep 60", timeout=1))
    assert execution["ComputeState"]["StateType"] == "Failed"
    assert "timed out" in execution["ComputeState"]["Message"]
    assert job["State"]["StateType"] == "Failed"
    assert leftover_containers(docker_engine, execution["ID"]) == []


def test_missing_image_fails_with_a_pull_error(stack: Gateway) -> None:
    _, execution = stack.run(docker_job("true", image="shoal-test/no-such-image:404"))
    assert execution["ComputeState"]["StateType"] == "Failed"
    assert "could not pull image shoal-test/no-such-image:404" in execution["ComputeState"]["Message"]


def test_containers_are_gone_after_every_job(stack: Gateway, docker_engine: Any) -> None:
    job_ids = [stack.submit(docker_job(f"echo {i}")) for i in range(4)]
    for job_id in job_ids:
        assert stack.wait_for_job(job_id, timeout=120)["State"]["StateType"] == "Completed"
    wait_for(lambda: not docker_engine.api.containers(all=True, filters={"label": EXECUTION_LABEL}),
             timeout=10, what="no labelled containers left")
