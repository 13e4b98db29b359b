"""The agent's long-poll against a real gateway."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from compute_agent import agent as agent_module
from compute_agent.agent import Agent
from compute_agent.settings import AgentSettings
from compute_agent.workspace import TaskRun
from tests.conftest import Gateway, wait_until
from tests.specs import wasm_job


def test_a_poll_while_ended_executions_still_clean_up_is_accepted(gateway: Gateway, tmp_path: Path) -> None:
    """The gateway counts a slot free as soon as it records an execution's end, and may fill it while the agent
    still removes that execution's folder: the agent then holds more executions than it has slots, and its poll
    must still be one the gateway accepts (it was refused, and the agent waited up to a second to poll again)."""

    async def main() -> None:
        settings = AgentSettings(gateway_url=gateway.url, data_dir=tmp_path / "agent", max_executions=1,
                                 poll_seconds=0.2)
        async with Agent(settings) as agent:
            cleaning_up = asyncio.Event()
            tasks = [asyncio.create_task(cleaning_up.wait()) for _ in range(2)]
            agent._running = {f"e-ended-{i}": (task, threading.Event()) for i, task in enumerate(tasks)}
            try:
                reply = await agent._poll_once()  # raised GatewayError (400: FreeSlots) before
            finally:
                cleaning_up.set()
                await asyncio.gather(*tasks)
                agent._running = {}
            # the gateway knows neither execution as one this node runs, so it answers at once that both are to stop
            assert reply is not None and reply["Executions"] == []
            assert sorted(reply["Cancel"]) == ["e-ended-0", "e-ended-1"]

    asyncio.run(main())


class _SlowStart:
    """A WASM executor (the agent's executor seam) whose task takes `delay` seconds to start, saying so when it has
    (unless `says_started` is False), and then runs `runs` seconds more."""

    name = "wasm"

    def __init__(self, delay: float, runs: float = 0.0, says_started: bool = True) -> None:
        self.delay, self.runs, self.says_started = delay, runs, says_started
        self.started_at: float | None = None

    def available(self) -> bool:
        return True

    def reap(self, node_id: str) -> int:
        return 0

    def run(self, task: TaskRun, cancel: threading.Event) -> int:
        cancel.wait(self.delay)
        self.started_at = time.monotonic()
        if self.says_started:
            task.started()
        cancel.wait(self.runs)
        for stream in (task.stdout, task.stderr):
            stream.close()
        return 0


async def _polls_while_running(gateway: Gateway, tmp_path: Path, executor: _SlowStart) -> tuple[list[float], float]:
    """Run one job on a one-slot agent; when each of its polls was sent, and when the job's run ended."""
    settings = AgentSettings(gateway_url=gateway.url, data_dir=tmp_path / "agent", max_executions=1, poll_seconds=5)
    async with Agent(settings, executors={"wasm": executor}) as agent:
        sent: list[float] = []
        poll = agent._gateway.poll

        async def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
            sent.append(time.monotonic())
            return await poll(*args, **kwargs)

        agent._gateway.poll = counted  # type: ignore[method-assign]
        running = asyncio.create_task(agent.run())
        try:
            await wait_until(lambda: sent, "the agent's first poll")
            job_id = await asyncio.to_thread(gateway.submit, wasm_job("echo", "x"))
            await asyncio.to_thread(gateway.wait_for_job, job_id)
            ended = time.monotonic()
        finally:
            agent.stop()
            await running
    return sent, ended


def test_an_agent_with_no_free_slot_polls_again_once_the_task_it_took_has_started(gateway: Gateway,
                                                                                  tmp_path: Path) -> None:
    """Its next poll only renews leases: sent at once, it would share the CPU with the task being set up."""
    executor = _SlowStart(delay=0.5)
    sent, _ = asyncio.run(_polls_while_running(gateway, tmp_path, executor))
    assert executor.started_at is not None and len(sent) >= 2, sent
    assert sent[1] >= executor.started_at, (sent, executor.started_at)


def test_an_agent_waits_for_a_task_to_start_only_so_long(gateway: Gateway, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that never says it started (an executor that cannot tell) holds the next poll up LAUNCH_WAIT."""
    monkeypatch.setattr(agent_module, "LAUNCH_WAIT", 0.3)
    executor = _SlowStart(delay=0.0, runs=3.0, says_started=False)
    sent, ended = asyncio.run(_polls_while_running(gateway, tmp_path, executor))
    assert executor.started_at is not None and len(sent) >= 2, sent
    assert executor.started_at + 0.25 <= sent[1] < ended - 1.0, (sent, executor.started_at, ended)
