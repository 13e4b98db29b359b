"""Managed inputs are kept in memory by their SHA-256: a job that uses one again does not download it again."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute_agent.errors import InputError
from compute_agent.inputs import InputCache, InputFetcher
from compute_agent.workspace import TaskRun
from tests.compute_agent.http_recorder import RecordingServer, Reply

MODULE, DATA, BIG = b"\0asm module bytes", b"some data\n" * 10, b"b" * 4096
OBJECTS = {"/module": MODULE, "/data": DATA, "/big": BIG, "/other": b"other bytes"}


def managed(server: RecordingServer, path: str, target: str, data: bytes | None = None) -> dict[str, Any]:
    data = OBJECTS[path] if data is None else data
    return {"Target": target, "Source": {"Type": "managed", "Params": {
        "Key": f"uploads/default/x{path}", "URL": server.url + path, "Size": len(data),
        "SHA256": hashlib.sha256(data).hexdigest()}}}


def fetch(cache: InputCache, root: Path, sources: list[dict[str, Any]], entry: str) -> TaskRun:
    """Fetch as an agent with `cache` does; `entry` is the target the executor would take in memory."""
    run = TaskRun(execution_id=root.name, node_id="n", engine="wasm", params={}, env={}, root=root)

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            await InputFetcher(http, limit=1 << 20, cache=cache).fetch_all(run, sources, in_memory=entry)

    asyncio.run(main())
    return run


@pytest.fixture
def server() -> Any:
    with RecordingServer(lambda request: Reply(200, OBJECTS[request.path])).running() as running:
        yield running


def test_a_managed_input_used_again_comes_from_memory(server: RecordingServer, tmp_path: Path) -> None:
    cache = InputCache(max_bytes=1 << 20, item_bytes=1024)
    sources = [managed(server, "/module", "/app/m.wasm"), managed(server, "/data", "/in/data"),
               managed(server, "/big", "/in/big")]
    first = fetch(cache, tmp_path / "first", sources, "/app/m.wasm")
    assert sorted(r.path for r in server.snapshot()) == ["/big", "/data", "/module"]
    assert first.in_memory == {}  # downloaded: saved as files, as any input
    assert (first.inputs_dir / "app/m.wasm").read_bytes() == MODULE

    second = fetch(cache, tmp_path / "second", sources, "/app/m.wasm")
    assert sorted(r.path for r in server.snapshot()) == ["/big", "/big", "/data", "/module"]  # too big to keep
    assert second.in_memory == {"/app/m.wasm": MODULE}
    assert (second.inputs_dir / "in/data").read_bytes() == DATA
    assert (second.inputs_dir / "in/big").read_bytes() == BIG
    assert sorted(m.target for m in second.inputs) == ["/in/big", "/in/data"]


def test_the_cache_forgets_the_least_recently_used_past_its_size(server: RecordingServer, tmp_path: Path) -> None:
    cache = InputCache(max_bytes=len(MODULE) + len(DATA), item_bytes=1024)
    fetch(cache, tmp_path / "a", [managed(server, "/module", "/m"), managed(server, "/data", "/d")], "")
    fetch(cache, tmp_path / "b", [managed(server, "/module", "/m")], "")  # used: the data is now the oldest
    fetch(cache, tmp_path / "c", [managed(server, "/other", "/o")], "")
    assert cache.get(hashlib.sha256(MODULE).hexdigest()) == MODULE
    assert cache.get(hashlib.sha256(DATA).hexdigest()) is None
    fetch(cache, tmp_path / "d", [managed(server, "/data", "/d")], "")
    assert [r.path for r in server.snapshot()] == ["/module", "/data", "/other", "/data"]


def test_a_download_that_does_not_match_its_digest_fails_and_is_not_kept(server: RecordingServer,
                                                                         tmp_path: Path) -> None:
    cache = InputCache()
    claimed = managed(server, "/data", "/d", data=b"x" * len(DATA))  # what the gateway recorded
    with pytest.raises(InputError, match="does not match"):
        fetch(cache, tmp_path / "a", [claimed], "")
    assert cache.get(claimed["Source"]["Params"]["SHA256"]) is None
