"""A task's output stream: in memory up to its limit, in its file beyond it or when the results are published."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from compute_agent.task_output import TaskOutput


def test_in_memory_until_the_limit_then_in_the_file_with_what_came_before(tmp_path: Path) -> None:
    output = TaskOutput(tmp_path / "results" / "stdout", in_memory=10)
    output.write(b"0123456")
    assert output.read() == b"0123456"
    assert not (tmp_path / "results").exists()
    output.write(b"789")  # exactly the limit: still in memory
    assert not output.path.exists()
    output.write(b"ab")
    assert output.path.read_bytes() == b"0123456789ab"
    output.write(b"cd")
    assert output.read() == b"0123456789abcd"
    assert output.read(5, 4) == b"5678"
    assert output.read(12) == b"cd"
    assert output.size == 14
    output.close()
    assert output.path.read_bytes() == b"0123456789abcd"


def test_reads_from_an_offset_in_memory(tmp_path: Path) -> None:
    output = TaskOutput(tmp_path / "stdout", in_memory=100)
    output.write(b"hello world")
    assert (output.read(6), output.read(0, 5), output.read(11)) == (b"world", b"hello", b"")
    output.close()
    assert output.read() == b"hello world"
    assert not output.path.exists()


def test_published_output_is_its_file_from_the_start_and_an_empty_one_is_made(tmp_path: Path) -> None:
    written, empty = TaskOutput(tmp_path / "results" / "stdout"), TaskOutput(tmp_path / "results" / "stderr")
    assert written.read() == b""
    written.write(b"line\n")
    assert written.path.read_bytes() == b"line\n"
    written.close()
    empty.close()
    assert empty.path.read_bytes() == b""
    with pytest.raises(ValueError, match="closed"):
        written.write(b"too late")
    assert written.path.read_bytes() == b"line\n"


def test_a_reader_sees_every_byte_while_a_thread_writes_across_the_limit(tmp_path: Path) -> None:
    output = TaskOutput(tmp_path / "stdout", in_memory=1000)
    chunks = [bytes([65 + i % 26]) * 37 for i in range(200)]
    seen = bytearray()

    def writer() -> None:
        for chunk in chunks:
            output.write(chunk)
        output.close()

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive() or len(seen) < output.size:
        seen += output.read(len(seen))
    thread.join()
    assert bytes(seen) == b"".join(chunks)


@pytest.mark.parametrize("in_memory", [0, 100], ids=["on disk", "in memory"])
def test_what_comes_past_the_cap_is_dropped(tmp_path: Path, in_memory: int) -> None:
    output = TaskOutput(tmp_path / "stdout", in_memory=in_memory, cap=10)
    output.write(b"0123456")
    output.write(b"789abc")
    output.write(b"more")
    output.close()
    assert (output.read(), output.size) == (b"0123456789", 10)
