"""The managed publisher against a hostile results dir (the task wrote it): links to folders outside, link
loops, hard links to files outside, FIFOs, devices, sockets, and names swapped for links while the archive is
being written. The agent never follows a link, never blocks, and never stores a byte it should not read."""

from __future__ import annotations

import gzip
import io
import logging
import os
import socket
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compute_agent.publish import archive

SECRET = b"TOP SECRET of the agent host\n"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    results = tmp_path / "exec" / "results"
    (results / "outputs" / "sub").mkdir(parents=True)
    (results / "stdout").write_text("hello\n")
    (results / "stderr").write_bytes(b"")
    (results / "exitCode").write_text("0")
    (results / "outputs" / "answer.txt").write_text("forty-two\n")
    (results / "outputs" / "sub" / "deep.txt").write_text("deep\n")
    return results


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder of the agent host next to the execution, on the same filesystem."""
    outside = tmp_path / "host"
    (outside / "private").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "private" / "answer.txt").write_bytes(SECRET)
    (outside / "private" / "deep.txt").write_bytes(SECRET)
    return outside


def archived(results: Path) -> tuple[dict[str, tarfile.TarInfo], bytes]:
    destination = results.parent / "results.tar.gz"
    size, _ = archive(results, destination)
    data = destination.read_bytes()
    assert size == len(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}, gzip.decompress(data)


def content(results: Path, name: str) -> bytes:
    with tarfile.open(results.parent / "results.tar.gz", "r:gz") as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "shoal.agent.publish")


@pytest.fixture(autouse=True)
def _capture_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.agent.publish")


# -- links -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_a_symlink_to_a_folder_outside_is_stored_as_a_link_and_never_entered(results: Path, outside: Path,
                                                                             kind: str) -> None:
    target = str(outside / "private") if kind == "absolute" else "../../../host/private"
    os.symlink(target, results / "outputs" / "escape")
    os.symlink("/etc", results / "outputs" / "etc")
    found, tar_bytes = archived(results)
    assert found["outputs/escape"].issym() and found["outputs/escape"].linkname == target
    assert found["outputs/etc"].issym() and found["outputs/etc"].linkname == "/etc"
    assert not [name for name in found if name.startswith(("outputs/escape/", "outputs/etc/"))]
    assert SECRET not in tar_bytes
    assert b"root:" not in tar_bytes


@pytest.mark.timeout(30)
def test_symlink_loops_are_stored_as_links(results: Path) -> None:
    os.symlink("b", results / "outputs" / "a")
    os.symlink("a", results / "outputs" / "b")
    os.symlink("self", results / "outputs" / "self")
    os.symlink("..", results / "outputs" / "sub" / "up")
    os.symlink(".", results / "outputs" / "here")
    found, _ = archived(results)
    for name, target in [("outputs/a", "b"), ("outputs/b", "a"), ("outputs/self", "self"),
                         ("outputs/sub/up", ".."), ("outputs/here", ".")]:
        assert found[name].issym() and found[name].linkname == target
    assert not [name for name in found if name.startswith(("outputs/sub/up/", "outputs/here/"))]
    assert len(found) == 12


def test_a_deep_tree_is_archived_without_recursion(results: Path) -> None:
    path = results / "outputs"
    for _ in range(300):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "leaf.txt").write_text("leaf")
    found, _ = archived(results)
    assert "outputs/" + "d/" * 300 + "leaf.txt" in found


# -- hard links --------------------------------------------------------------------------------------------


def test_a_hard_link_to_a_file_outside_is_left_out(results: Path, outside: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    os.link(outside / "secret.txt", results / "outputs" / "innocent.txt")
    found, tar_bytes = archived(results)
    assert "outputs/innocent.txt" not in found
    assert SECRET not in tar_bytes
    assert "outputs/innocent.txt has hard links outside the results" in warnings(caplog)
    assert found["outputs/answer.txt"].isfile()  # everything else is still there


def test_a_file_outside_linked_twice_inside_is_left_out_under_both_names(results: Path, outside: Path) -> None:
    os.link(outside / "secret.txt", results / "outputs" / "one.txt")
    os.link(outside / "secret.txt", results / "outputs" / "sub" / "two.txt")
    found, tar_bytes = archived(results)
    assert "outputs/one.txt" not in found and "outputs/sub/two.txt" not in found
    assert SECRET not in tar_bytes


def test_hard_links_between_files_inside_are_kept(results: Path) -> None:
    os.link(results / "outputs" / "answer.txt", results / "outputs" / "sub" / "same.txt")
    found, _ = archived(results)
    first, second = found["outputs/answer.txt"], found["outputs/sub/same.txt"]
    assert first.isfile() and second.islnk() and second.linkname == "outputs/answer.txt"
    assert content(results, "outputs/sub/same.txt") == b"forty-two\n"


# -- FIFOs, devices, sockets -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_fifo_is_left_out_without_blocking(results: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(results / "outputs" / "pipe")
    found, _ = archived(results)  # opening the FIFO to read it would wait for a writer forever
    assert "outputs/pipe" not in found
    assert "outputs/pipe is a FIFO" in warnings(caplog)
    assert content(results, "outputs/answer.txt") == b"forty-two\n"


def make_device(path: Path, major: int, minor: int, kind: int = stat.S_IFCHR) -> None:
    try:
        os.mknod(path, 0o666 | kind, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("creating device files needs CAP_MKNOD")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("major", "minor", "kind", "label"), [
    (1, 5, stat.S_IFCHR, "character device"),  # /dev/zero: reading it never ends
    (1, 3, stat.S_IFCHR, "character device"),  # /dev/null
    (7, 0, stat.S_IFBLK, "block device"),  # a loop device
])
def test_a_device_file_is_left_out_and_never_opened(results: Path, caplog: pytest.LogCaptureFixture, major: int,
                                                    minor: int, kind: int, label: str) -> None:
    make_device(results / "outputs" / "device", major, minor, kind)
    found, _ = archived(results)
    assert "outputs/device" not in found
    assert f"outputs/device is a {label}" in warnings(caplog)


def test_a_socket_is_left_out(results: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        path = results / "outputs" / "s"
        server.bind(str(path))
        found, _ = archived(results)
    assert "outputs/s" not in found
    assert "outputs/s is a socket" in warnings(caplog)


# -- names swapped while the archive is written ------------------------------------------------------------


@pytest.fixture
def on_open(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, Callable[[], None]], None]]:
    """Run a swap just before the publisher opens a given name (the race, made certain)."""
    swaps: dict[str, Callable[[], None]] = {}
    real_open = os.open

    def opening(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        swap = swaps.pop(os.fsdecode(path), None)
        if swap is not None:
            swap()
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", opening)
    yield swaps.__setitem__


def test_a_file_swapped_for_a_symlink_is_not_followed(results: Path, outside: Path, on_open: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    victim = results / "outputs" / "answer.txt"

    def swap() -> None:
        victim.unlink()
        os.symlink(outside / "secret.txt", victim)

    on_open("answer.txt", swap)
    found, tar_bytes = archived(results)
    assert "outputs/answer.txt" not in found
    assert SECRET not in tar_bytes
    assert "outputs/answer.txt changed while archiving" in warnings(caplog)


def test_a_folder_swapped_for_a_symlink_is_not_entered(results: Path, outside: Path, on_open: Any) -> None:
    """`sub` swapped for a link to a host folder holding files of the same names."""
    sub = results / "outputs" / "sub"

    def swap() -> None:
        sub.rename(results.parent / "moved-away")
        os.symlink(outside / "private", sub)

    on_open("sub", swap)
    found, tar_bytes = archived(results)
    assert not [name for name in found if name.startswith("outputs/sub/")]
    assert SECRET not in tar_bytes


def test_a_file_swapped_for_a_hard_link_to_a_file_outside_is_left_out(results: Path, outside: Path,
                                                                      on_open: Any) -> None:
    victim = results / "outputs" / "answer.txt"

    def swap() -> None:
        victim.unlink()
        os.link(outside / "secret.txt", victim)

    on_open("answer.txt", swap)
    found, tar_bytes = archived(results)
    assert "outputs/answer.txt" not in found
    assert SECRET not in tar_bytes


@pytest.mark.timeout(30)
def test_a_file_swapped_for_a_fifo_does_not_block(results: Path, on_open: Any) -> None:
    victim = results / "outputs" / "answer.txt"

    def swap() -> None:
        victim.unlink()
        os.mkfifo(victim)

    on_open("answer.txt", swap)
    found, _ = archived(results)
    assert "outputs/answer.txt" not in found


@pytest.mark.timeout(30)
def test_a_file_swapped_for_a_device_is_never_read(results: Path, on_open: Any) -> None:
    victim = results / "outputs" / "answer.txt"

    def swap() -> None:
        victim.unlink()
        make_device(victim, 1, 5)  # /dev/zero

    on_open("answer.txt", swap)
    found, _ = archived(results)
    assert "outputs/answer.txt" not in found
