"""Log shipping: a task's stdout and stderr tailed while the task writes them and sent as ordered chunks to a
real HTTP server standing in for the gateway's logs endpoint. The streams are kept in memory up to 16 bytes and
in their files beyond, so most scenarios cross from one to the other."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from compute_agent.gateway_client import GatewayClient
from compute_agent.log_shipping import MAX_CHUNK, MAX_INLINE, LogShipper
from compute_agent.task_output import TaskOutput
from tests.compute_agent.http_recorder import Recorded, RecordingServer, Reply
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

EXECUTION = "exec-logs"
LOGS_PATH = f"/api/v1/compute/executions/{EXECUTION}/logs"
GATEWAY_BODY_LIMIT = 2 << 20  # gateway/logs_api.py: append() reads at most this many bytes


def kept(request: Recorded) -> Reply:
    """Like the gateway: 413 for a body over its limit, else everything kept."""
    if len(request.body) > GATEWAY_BODY_LIMIT:
        return Reply.of_json({"Message": "the request body is over the limit"}, 413)
    return Reply.of_json({"Kept": sum(len(c["Data"]) for c in request.json()["Chunks"])})


def accepted(server: RecordingServer) -> dict[str, list[tuple[int, str]]]:
    """(Offset, Data) per stream of the chunks in requests the server answered with 2xx, in answer order."""
    streams: dict[str, list[tuple[int, str]]] = {}
    for request, reply in server.answered_snapshot():
        if request.path == LOGS_PATH and 200 <= reply.status < 300:
            for chunk in request.json()["Chunks"]:
                streams.setdefault(chunk["Stream"], []).append((chunk["Offset"], chunk["Data"]))
    return streams


def reassemble(chunks: list[tuple[int, str]]) -> str:
    """The stream as the gateway stores it (a chunk wholly stored already is dropped); fails on a gap."""
    text = ""
    for offset, data in chunks:
        assert offset <= len(text), f"gap: chunk at {offset} after {len(text)} characters"
        if offset + len(data) > len(text):
            assert text[offset:] == data[: len(text) - offset], "a resent chunk differs from the first"
            text = text[:offset] + data
    return text


def append(output: TaskOutput, data: bytes) -> None:
    output.write(data)


Scenario = Callable[[LogShipper, TaskOutput, TaskOutput], Awaitable[None]]


def ship(server: RecordingServer, tmp_path: Path, scenario: Scenario, *, start: bool = True) -> None:
    """Run `scenario(shipper, stdout, stderr)` with a started shipper; it is closed afterwards if still open."""
    stdout, stderr = TaskOutput(tmp_path / "stdout", in_memory=16), TaskOutput(tmp_path / "stderr", in_memory=16)

    async def main() -> None:
        gateway = GatewayClient(server.url, poll_seconds=1)
        gateway.credential = "node-credential"
        shipper = LogShipper(gateway, EXECUTION, {"stdout": stdout, "stderr": stderr})
        try:
            if start:
                shipper.start()
            await scenario(shipper, stdout, stderr)
        finally:
            await gateway.aclose()

    with server.running():
        asyncio.run(main())


def test_chunks_are_shipped_live_in_order_with_contiguous_offsets(tmp_path: Path) -> None:
    server = RecordingServer(kept)

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, b"line 1\n")
        await wait_until(lambda: accepted(server).get("stdout"), "the first line to be shipped before close")
        append(stdout, b"line 2\n")
        append(stderr, b"warning\n")
        await wait_until(lambda: len(accepted(server).get("stdout", [])) >= 2, "the second line")
        append(stdout, b"last line, no newline")
        await shipper.close()

    ship(server, tmp_path, scenario)
    streams = accepted(server)
    assert streams["stdout"][:2] == [(0, "line 1\n"), (7, "line 2\n")]
    assert reassemble(streams["stdout"]) == "line 1\nline 2\nlast line, no newline"
    assert streams["stderr"] == [(0, "warning\n")]
    requests = server.snapshot()
    assert all(r.method == "POST" and r.path == LOGS_PATH for r in requests)
    assert all(r.headers["authorization"] == "Bearer node-credential" for r in requests)


def test_long_output_is_cut_into_chunks_of_at_most_max_chunk(tmp_path: Path) -> None:
    server = RecordingServer(kept)
    text = "".join(f"{i:07d}\n" for i in range(12_000))  # 96 000 characters

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, text.encode())
        await shipper.close()

    ship(server, tmp_path, scenario)
    chunks = accepted(server)["stdout"]
    assert len(chunks) == 3
    assert all(len(data) <= MAX_CHUNK for _, data in chunks)
    assert [offset for offset, _ in chunks] == [0, MAX_CHUNK, 2 * MAX_CHUNK]
    assert reassemble(chunks) == text


def test_offsets_count_characters_and_a_character_split_between_reads_is_kept_whole(tmp_path: Path) -> None:
    server = RecordingServer(kept)

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, b"h" + "é".encode()[:1])  # the first byte of a two-byte character
        await wait_until(lambda: accepted(server).get("stdout"), "the complete part to be shipped")
        append(stdout, "é".encode()[1:] + "llo €uro\n".encode())
        await shipper.close()

    ship(server, tmp_path, scenario)
    assert accepted(server)["stdout"] == [(0, "h"), (1, "éllo €uro\n")]


def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    server = RecordingServer(kept)

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, b"ok \xff\xfe done\n\xc3")  # ends inside a character: flushed as a replacement at close
        await shipper.close()

    ship(server, tmp_path, scenario, start=False)
    assert reassemble(accepted(server)["stdout"]) == "ok \ufffd\ufffd done\n\ufffd"


def test_close_ships_what_is_left_and_an_empty_stream_sends_nothing(tmp_path: Path) -> None:
    server = RecordingServer(kept)

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, b"written before the first tick\n")
        await shipper.close()  # before INTERVAL: only close() can have shipped it

    ship(server, tmp_path, scenario)
    assert accepted(server) == {"stdout": [(0, "written before the first tick\n")]}
    assert len(server.snapshot()) == 1


def test_a_server_error_requeues_the_chunks_for_the_next_batch(tmp_path: Path) -> None:
    statuses = [503]

    def flaky(request: Recorded) -> Reply:
        if statuses:
            return Reply.of_json({"Message": "busy"}, statuses.pop(0))
        return kept(request)

    server = RecordingServer(flaky)

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, b"abc")
        await wait_until(lambda: server.answered_snapshot(), "the refused batch")
        append(stdout, b"def")
        await wait_until(lambda: len(reassemble(accepted(server).get("stdout", []))) == 6, "the resent batch")
        await shipper.close()

    ship(server, tmp_path, scenario)
    refused, _ = server.answered_snapshot()[0]
    assert refused.json()["Chunks"] == [{"Stream": "stdout", "Offset": 0, "Data": "abc"}]
    chunks = accepted(server)["stdout"]
    assert chunks[0][0] == 0 and chunks[0][1].startswith("abc")
    assert reassemble(chunks) == "abcdef"


@pytest.mark.parametrize("status", [409, 413])
def test_a_refusal_stops_shipping_for_good(tmp_path: Path, status: int) -> None:
    server = RecordingServer(lambda request: Reply.of_json({"Message": "no more logs"}, status))

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, b"abc")
        await wait_until(lambda: server.answered_snapshot(), "the refused batch")
        append(stdout, b"more")
        append(stderr, b"and more")
        await shipper.close()  # a final ship would be a second request

    ship(server, tmp_path, scenario)
    assert len(server.snapshot()) == 1


def test_a_burst_is_sent_in_requests_the_gateway_accepts(tmp_path: Path) -> None:
    server = RecordingServer(kept)
    text = ("y" * 99 + "\n") * 30_000  # 3 MB written before the first tick

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, text.encode())
        await shipper.close()

    ship(server, tmp_path, scenario, start=False)
    assert all(len(r.body) <= GATEWAY_BODY_LIMIT for r in server.snapshot())
    assert reassemble(accepted(server).get("stdout", [])) == text


def test_close_does_not_lose_a_batch_that_was_in_flight(tmp_path: Path) -> None:
    release = threading.Event()
    first = threading.Event()

    def slow_then_failing(request: Recorded) -> Reply:
        if not first.is_set():
            first.set()
            release.wait(10)  # still answering when the shipper is closed, and then it fails
            return Reply.of_json({"Message": "busy"}, 503)
        return kept(request)

    server = RecordingServer(slow_then_failing)

    async def scenario(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, b"first ")
        await wait_until(first.is_set, "the first batch to be in flight")
        append(stdout, b"second\n")
        closing = asyncio.ensure_future(shipper.close())
        try:
            await wait_until(shipper._closing.is_set, "the shipper to begin closing")
        finally:
            release.set()  # the batch in flight now fails, after close() was called
        await closing

    ship(server, tmp_path, scenario)
    assert reassemble(accepted(server).get("stdout", [])) == "first second\n"


def test_a_short_tasks_output_is_handed_back_for_the_completion_and_a_long_ones_shipped(tmp_path: Path) -> None:
    """finish(): what is left, when it is at most MAX_INLINE characters, comes back (the completion carries it)
    instead of going in a request of its own; past that it is shipped as close() ships it."""
    server = RecordingServer(kept)
    handed: list[list[dict[str, object]]] = []

    async def short(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, b"done\n")
        append(stderr, b"note\n")
        handed.append(await shipper.finish())

    (tmp_path / "short").mkdir()
    ship(server, tmp_path / "short", short)
    assert server.snapshot() == []
    assert handed[0] == [{"Stream": "stdout", "Offset": 0, "Data": "done\n"},
                         {"Stream": "stderr", "Offset": 0, "Data": "note\n"}]

    long_text = "x" * (MAX_INLINE + 1)
    server = RecordingServer(kept)

    async def long(shipper: LogShipper, stdout: TaskOutput, stderr: TaskOutput) -> None:
        append(stdout, long_text.encode())
        handed.append(await shipper.finish())

    (tmp_path / "long").mkdir()
    ship(server, tmp_path / "long", long)
    assert handed[1] == []
    assert reassemble(accepted(server)["stdout"]) == long_text
