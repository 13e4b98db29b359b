"""Docker tasks through the Docker SDK: no network, limits, read-only inputs, and the container always removed."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound
from docker.types import LogConfig
from docker.types import Mount as DockerMount
from requests.exceptions import RequestException

from compute_agent.errors import ExecutorError, TimeoutExpired
from compute_agent.workspace import TaskRun

EXECUTION_LABEL = "io.shoal.execution-id"
NODE_LABEL = "io.shoal.node-id"
_AVAILABILITY_TTL = 15.0


class DockerExecutor:
    name = "docker"

    def __init__(self) -> None:
        self._client: Any = None
        self._checked_at = -_AVAILABILITY_TTL
        self._available = False

    def _docker(self) -> Any:
        if self._client is None:
            self._client = docker.from_env(timeout=60)
        return self._client

    def available(self) -> bool:
        """Whether an engine answers; checked again every few seconds, so an engine started later is found."""
        now = time.monotonic()
        if now - self._checked_at >= _AVAILABILITY_TTL:
            self._checked_at = now
            try:
                self._available = bool(self._docker().ping())
            except DockerException:
                self._client, self._available = None, False
        return self._available

    def reap(self, node_id: str) -> int:
        """Remove containers an earlier run of this node left behind (it was killed before cleaning up)."""
        if not self.available():
            return 0
        api = self._docker().api
        leftovers = api.containers(all=True, quiet=True, filters={"label": f"{NODE_LABEL}={node_id}"})
        for container in leftovers:
            with contextlib.suppress(DockerException):
                api.remove_container(container["Id"], force=True)
        return len(leftovers)

    def run(self, task: TaskRun, cancel: threading.Event) -> int:
        params = task.params
        try:
            client = self._docker()
            self._ensure_image(client, params["Image"])
            container = client.containers.create(**self._container_args(task))
        except DockerException as exc:
            raise ExecutorError(f"docker could not create the container: {exc}") from exc
        try:
            # attached before it starts, the output comes byte for byte, not through the engine's log driver
            frames = container.attach(stdout=True, stderr=True, stream=True, demux=True, logs=False)
            copying = threading.Thread(target=_copy_output, args=(frames, task), daemon=True)
            copying.start()
            container.start()
            task.started()
            status = self._wait(container, task, cancel)
            copying.join(timeout=30)
            container.reload()
            if container.attrs.get("State", {}).get("OOMKilled"):
                raise ExecutorError("memory limit exceeded: the task was killed for using too much memory")
            return int(status["StatusCode"])
        except DockerException as exc:
            raise ExecutorError(f"docker failed while running the task: {exc}") from exc
        finally:
            with contextlib.suppress(DockerException):
                container.remove(force=True)

    @staticmethod
    def _ensure_image(client: Any, image: str) -> None:
        # pulling is set-up, before the execution timeout starts counting
        try:
            client.images.get(image)
        except ImageNotFound:
            try:
                client.images.pull(image)
            except DockerException as exc:
                raise ExecutorError(f"could not pull image {image}: {exc}") from exc

    @staticmethod
    def _container_args(task: TaskRun) -> dict[str, Any]:
        params = task.params
        env = dict(item.split("=", 1) for item in params.get("EnvironmentVariables", [])) | task.env
        mounts = [
            DockerMount(target=m.target, source=str(m.source), type="bind", read_only=m.read_only)
            for m in (*task.inputs, *task.outputs)
        ]
        args: dict[str, Any] = {
            "image": params["Image"],
            "command": params.get("Parameters") or None,
            "entrypoint": params.get("Entrypoint") or None,
            "environment": env,
            "working_dir": params.get("WorkingDirectory") or None,
            "network_mode": "none",
            "mounts": mounts,
            "labels": {EXECUTION_LABEL: task.execution_id, NODE_LABEL: task.node_id},
            "security_opt": ["no-new-privileges"],
            "cap_drop": ["ALL"],
            "pids_limit": task.pids_limit,
            "privileged": False,
            "log_config": LogConfig(type="none"),  # output is read from the attach stream, not kept twice
            "detach": True,
        }
        if task.memory:
            args["mem_limit"] = task.memory
            args["memswap_limit"] = task.memory
        if task.cpu:
            args["nano_cpus"] = int(task.cpu * 1e9)
        return args

    @staticmethod
    def _wait(container: Any, task: TaskRun, cancel: threading.Event) -> dict[str, Any]:
        deadline = time.monotonic() + task.timeout if task.timeout else None
        while True:
            try:
                result: dict[str, Any] = container.wait(timeout=0.5)
                return result
            except RequestException as exc:  # a wait that times out surfaces as the transport's error
                if "timed out" not in str(exc):
                    raise ExecutorError(f"lost the Docker engine while the task ran: {exc}") from exc
            if cancel.is_set():
                _kill(container)
                raise ExecutorError("the execution was cancelled")
            if deadline is not None and time.monotonic() > deadline:
                _kill(container)
                raise TimeoutExpired(f"Execution timed out after {task.timeout:g}s")


def _kill(container: Any) -> None:
    with contextlib.suppress(DockerException):  # it may have just exited by itself
        container.kill()


def _copy_output(frames: Any, task: TaskRun) -> None:
    """Write the attached container's stdout and stderr frames to the task's streams (which keep at most
    `max_output_bytes` of each) as they come (the agent's log shipper tails them)."""
    streams = (task.stdout, task.stderr)
    try:
        for frame in frames:
            for stream, data in zip(streams, frame, strict=True):
                if data:
                    stream.write(data)
    except (DockerException, RequestException, OSError):
        pass  # the container is gone; what arrived is kept
    finally:
        for stream in streams:
            stream.close()
