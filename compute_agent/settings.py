"""Agent settings: built once from flags and the environment at start, then passed down."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from compute_agent.inputs import AllowedPath


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    gateway_url: str
    data_dir: Path
    token: str = ""
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    max_executions: int = 0
    queue: int = 0  # executions taken ahead of the free slots
    cpu: float = 0.0
    memory: int = 0
    disk: int = 0
    poll_seconds: float = 20.0
    max_input_bytes: int = 10 << 30
    max_output_bytes: int = 1 << 30
    default_cpu: str = "500m"
    default_memory: str = "512Mb"
    pids_limit: int = 256
    allowed_local_paths: tuple[AllowedPath, ...] = ()

    @property
    def slots(self) -> int:
        """Tasks run at once."""
        return self.max_executions or max(1, os.cpu_count() or 1)

    @property
    def takes(self) -> int:
        """Executions the node holds at once: those its slots run and those waiting for one."""
        return self.slots + self.queue

    def capacity(self) -> dict[str, float]:
        """What this node offers: the flags' values, else 80% of the host (as Bacalhau allocates)."""
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(self.data_dir).free
        return {
            "CPU": self.cpu or round((os.cpu_count() or 1) * 0.8, 3),
            "Memory": self.memory or int(memory * 0.8),
            "Disk": self.disk or int(disk * 0.8),
            "GPU": 0,
            "Slots": self.slots,
        }
