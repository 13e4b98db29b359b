"""Agent settings: built once from flags and the environment at start, then passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    gateway_url: str
    data_dir: Path
    token: str = ""
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    max_executions: int = 0
    poll_seconds: float = 20.0
    max_input_bytes: int = 10 << 30
    max_output_bytes: int = 1 << 30
    default_cpu: str = "500m"
    default_memory: str = "512Mb"
    pids_limit: int = 256

    @property
    def slots(self) -> int:
        return self.max_executions or max(1, os.cpu_count() or 1)
