"""The Shoal compute agent: registers with a gateway, long-polls it for work, runs Docker or WASM tasks,
and uploads results through the presigned URLs the gateway hands out."""

from compute_agent.agent import Agent
from compute_agent.settings import AgentSettings

__all__ = ["Agent", "AgentSettings"]
