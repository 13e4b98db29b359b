"""Job specs for tests, written as a user would send them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

PROBE = Path(__file__).parent / "fixtures" / "wasm" / "probe.wasm"


def inline(data: bytes, target: str) -> dict[str, Any]:
    url = "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    return {"Target": target, "Source": {"Type": "inline", "Params": {"URL": url}}}


def task(engine: dict[str, Any], *, inputs: list[dict[str, Any]] | None = None, outputs: dict[str, str] | None = None,
         env: dict[str, str] | None = None, timeout: int = 0, publisher: str = "s3managed") -> dict[str, Any]:
    return {
        "Name": "main",
        "Engine": engine,
        "Publisher": {"Type": publisher},
        "Env": env or {},
        "InputSources": inputs or [],
        "ResultPaths": [{"Name": name, "Path": path} for name, path in (outputs or {}).items()],
        "Timeouts": {"ExecutionTimeout": timeout},
    }


def wasm_job(*args: str, count: int = 1, module: Path = PROBE, inputs: list[dict[str, Any]] | None = None,
             **options: Any) -> dict[str, Any]:
    """The probe module (tests/fixtures/wasm/probe.c) with `args`."""
    engine = {"Type": "wasm", "Params": {"EntryModule": "/app/probe.wasm", "Parameters": list(args)}}
    sources = [inline(module.read_bytes(), "/app/probe.wasm"), *(inputs or [])]
    return {"Type": "batch", "Count": count, "Tasks": [task(engine, inputs=sources, **options)]}


def docker_job(*command: str, image: str = "shoal-test/busybox:1", count: int = 1, **options: Any) -> dict[str, Any]:
    engine = {"Type": "docker", "Params": {"Image": image, "Entrypoint": ["/bin/sh", "-c"],
                                           "Parameters": [" ".join(command)]}}
    return {"Type": "batch", "Count": count, "Tasks": [task(engine, **options)]}
