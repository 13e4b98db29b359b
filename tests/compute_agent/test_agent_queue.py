"""An agent's queue (`--queue`): executions taken ahead of its free slots wait on the node for one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from compute_agent.agent import Agent
from compute_agent.settings import AgentSettings
from compute_agent.workspace import TaskRun
from tests.conftest import Gateway, wait_until
from tests.specs import wasm_job


class _Held:
    """A WASM executor (the agent's executor seam) whose tasks run until the test lets them end (or they are
    cancelled; a task that is to `spin` only then); it counts how many run at once."""

    name = "wasm"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = self.most = self.started = 0
        self._lock = threading.Lock()

    def available(self) -> bool:
        return True

    def reap(self, node_id: str) -> int:
        return 0

    def run(self, task: TaskRun, cancel: threading.Event) -> int:
        with self._lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        task.started()
        spins = "spin" in task.params.get("Parameters", [])
        while not ((self.release.is_set() and not spins) or cancel.is_set()):
            cancel.wait(0.01)
        with self._lock:
            self.running -= 1
        for stream in (task.stdout, task.stderr):
            stream.close()
        return 0


@asynccontextmanager
async def _polling(gateway: Gateway, tmp_path: Path, executor: _Held, queue: int) -> AsyncIterator[Agent]:
    """A one-slot agent with `queue`, polling `gateway` until the block ends."""
    settings = AgentSettings(gateway_url=gateway.url, data_dir=tmp_path / "agent", max_executions=1, queue=queue,
                             poll_seconds=5)
    async with Agent(settings, executors={"wasm": executor}) as agent:
        running = asyncio.create_task(agent.run())
        try:
            yield agent
        finally:
            agent.stop()
            await running


def test_executions_taken_ahead_wait_for_the_slot(gateway: Gateway, tmp_path: Path) -> None:
    """One slot and a queue of one: while a task runs, the node takes the next job too, which starts only once
    the first ended; a third waits on the gateway meanwhile."""
    executor = _Held()

    async def main() -> None:
        async with _polling(gateway, tmp_path, executor, queue=1) as agent:
            jobs = [await asyncio.to_thread(gateway.submit, wasm_job("echo", str(i))) for i in range(3)]
            await wait_until(lambda: len(agent._running) == 2, "the node to take two executions")
            assert executor.started == 1 and executor.most == 1
            states = [(await asyncio.to_thread(gateway.executions, job_id)) for job_id in jobs]
            held = [e for executions in states for e in executions if e["NodeID"] == agent.node_id]
            assert len(held) == 2, states
            executor.release.set()
            for job_id in jobs:
                job = await asyncio.to_thread(gateway.wait_for_job, job_id)
                assert job["State"]["StateType"] == "Completed", job
        assert executor.started == 3 and executor.most == 1

    asyncio.run(main())


def test_without_a_queue_the_node_takes_no_more_than_its_slots(gateway: Gateway, tmp_path: Path) -> None:
    executor = _Held()

    async def main() -> None:
        async with _polling(gateway, tmp_path, executor, queue=0) as agent:
            jobs = [await asyncio.to_thread(gateway.submit, wasm_job("echo", str(i))) for i in range(2)]
            await wait_until(lambda: executor.started == 1, "the first task to start")
            second = await asyncio.to_thread(gateway.executions, jobs[1])
            await agent._poll_once()  # the poll that renews the first: the node's full, so it takes nothing
            assert len(agent._running) == 1 and [e["NodeID"] for e in second] == [""], second
            executor.release.set()
            await asyncio.to_thread(gateway.wait_for_job, jobs[1])

    asyncio.run(main())


def test_a_queued_execution_does_not_wait_for_a_slot_a_service_holds(gateway: Gateway, tmp_path: Path) -> None:
    """A service runs until it is stopped: with its node's one slot held by one, the execution taken ahead starts
    beside it (the node never holds more than its slots and queue) instead of waiting for ever."""
    executor = _Held()

    async def main() -> None:
        async with _polling(gateway, tmp_path, executor, queue=1):
            service = await asyncio.to_thread(gateway.submit, wasm_job("spin") | {"Type": "service"})
            await wait_until(lambda: executor.started == 1, "the service to start")
            batch = await asyncio.to_thread(gateway.submit, wasm_job("echo", "beside"))
            await wait_until(lambda: executor.started == 2, "the batch task to start beside the service")
            assert executor.most == 2
            executor.release.set()
            job = await asyncio.to_thread(gateway.wait_for_job, batch)
            assert job["State"]["StateType"] == "Completed", job
            stopped = await asyncio.to_thread(gateway.http.delete, f"/api/v1/orchestrator/jobs/{service}")
            assert stopped.status_code == 200, stopped.text

    asyncio.run(main())
