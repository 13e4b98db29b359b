"""The agent's long-poll against a real gateway."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from compute_agent.agent import Agent
from compute_agent.settings import AgentSettings
from tests.conftest import Gateway


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
