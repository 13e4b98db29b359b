"""Hostile result archives, fetched and extracted exactly as `shoal job get` does (`download_results`), served
from a real HTTP server on 127.0.0.1 with the right SHA256 and Size, so that only the archive's content is
hostile. Whatever the archive, nothing outside the output folder changes; a refused archive is a
`ResultsError` and leaves nothing behind in it."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shoal.results
from shoal.errors import ResultsError
from shoal.results import MAX_MEMBERS, download_results
from tests.conftest import free_port

# -- a tiny HTTP server: path -> body ----------------------------------------------------------------------


class Served:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.hits: list[str] = []

    def add(self, body: bytes, status: int = 200) -> str:
        path = f"/objects/{uuid.uuid4().hex}.tar.gz"
        self.routes[path] = (status, body)
        return self.base_url + path


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    port = free_port()
    state = Served(f"http://127.0.0.1:{port}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            status, body = state.routes.get(self.path.split("?", 1)[0], (404, b"no such object"))
            self.send_response(status)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client may hang up early on purpose
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(10)


def item(served: Served, body: bytes, execution_id: str = "e-1", partition: int = 0, *,
         sha256: str | None = None, size: int | None = None, status: int = 200) -> dict[str, Any]:
    """A result item as the gateway lists it, with the body's true digest and size unless told otherwise."""
    return {
        "Type": "s3PreSigned",
        "Params": {
            "PreSignedURL": served.add(body, status),
            "Managed": True,
            "ExecutionID": execution_id,
            "PartitionIndex": partition,
            "SHA256": sha256 if sha256 is not None else hashlib.sha256(body).hexdigest(),
            "Size": size if size is not None else len(body),
        },
    }


# -- archives ----------------------------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def regular(name: str, data: bytes = b"pwned", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def directory(name: str, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = (1, 3) if kind == tarfile.CHRTYPE else (7, 0)
    info.mode = 0o666
    return info, None


def tar_bytes(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tar_gz(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return gzip.compress(tar_bytes(*members, fmt=fmt))


def streams(stdout: bytes = b"ok\n") -> list[Member]:
    return [regular("exitCode", b"0"), regular("stderr", b""), regular("stdout", stdout)]


# -- the filesystem around the output folder ---------------------------------------------------------------


class Arena:
    """tmp_path with things worth attacking next to the output folder `out` (tmp_path/a/b/out)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "a" / "b" / "out"
        (root / "a" / "b").mkdir(parents=True)
        (root / "victim").mkdir()
        (root / "victim" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "a" / "b" / "sibling.txt").write_text("a sibling of out\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[str, bytes, int]]:
        """Everything under root except out: kind, content (or link target) and mode."""
        found = {}
        for path in self.root.rglob("*"):
            if path == self.out or self.out in path.parents:
                continue
            details = path.lstat()
            if path.is_symlink():
                found[str(path.relative_to(self.root))] = ("link", os.readlink(path).encode(), 0)
            elif path.is_dir():
                found[str(path.relative_to(self.root))] = ("dir", b"", details.st_mode)
            else:
                found[str(path.relative_to(self.root))] = ("file", path.read_bytes(), details.st_mode)
        return found

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before
        assert not (Path("/") / "escaped.txt").exists()
        # nothing inside out leads outside it
        top = Path(os.path.realpath(self.out))
        for path in self.out.rglob("*") if self.out.exists() else []:
            if path.is_symlink():
                real = Path(os.path.realpath(path))  # never raises, even on a loop
                assert real.is_relative_to(top), f"{path} leads outside: {real}"

    def contents(self) -> set[str]:
        return {str(p.relative_to(self.out)) for p in self.out.rglob("*")} if self.out.exists() else set()


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    return Arena(tmp_path)


def refused(served: Served, arena: Arena, body: bytes, *, raw: bool, match: str = "could not be extracted safely",
            **limits: Any) -> ResultsError:
    """`body` is refused: a ResultsError, nothing outside out changed and nothing left inside it."""
    with pytest.raises(ResultsError, match=match) as raised:
        download_results([item(served, body)], arena.out, raw=raw, **limits)
    arena.assert_untouched()
    assert arena.contents() == set()
    return raised.value


RAW = pytest.mark.parametrize("raw", [False, True], ids=["merged", "raw"])


# -- names -------------------------------------------------------------------------------------------------


@RAW
@pytest.mark.parametrize("members", [
    [regular("../escape")],
    [regular("../../sibling.txt")],
    [regular("outputs/../../../../victim/passwd")],
    [directory("outputs"), regular("outputs/x", b"x"), regular("outputs/../../escaped.txt")],
    [regular("..")],
], ids=["parent", "overwrite-sibling", "deep", "after-good-members", "bare-dotdot"])
def test_dotdot_is_refused(served: Served, arena: Arena, members: list[Member], raw: bool) -> None:
    error = refused(served, arena, tar_gz(*streams(), *members), raw=raw)
    assert "leaves the folder" in str(error)


@RAW
@pytest.mark.parametrize("name", ["/escaped.txt", "/tmp/escaped.txt", "//victim/passwd"])
def test_an_absolute_name_is_refused(served: Served, arena: Arena, name: str, raw: bool) -> None:
    name = name.replace("/victim", str(arena.root / "victim"))
    error = refused(served, arena, tar_gz(*streams(), regular(name)), raw=raw)
    assert "absolute path" in str(error)


@RAW
@pytest.mark.parametrize("members", [
    [regular("")],
    [regular(".")],
    [regular("./")],
], ids=["empty", "dot", "dot-slash"])
def test_a_file_without_a_name_is_refused(served: Served, arena: Arena, members: list[Member], raw: bool) -> None:
    refused(served, arena, tar_gz(*streams(), *members), raw=raw)


@RAW
def test_a_dot_folder_and_dot_slash_names_are_fine(served: Served, arena: Arena, raw: bool) -> None:
    """GNU tar's `tar -C dir .` writes `./` and `./name`: harmless, extracted as if without `./`."""
    body = tar_gz(directory("."), directory("./outputs"), regular("./outputs/x.txt", b"x"),
                  regular("./stdout", b"out\n"), regular("exitCode", b"0"))
    out = download_results([item(served, body)], arena.out, raw=raw)
    base = out / "raw" / "e-1" if raw else out
    assert (base / "outputs" / "x.txt").read_bytes() == b"x"
    assert (base / "stdout").read_bytes() == b"out\n"
    arena.assert_untouched()


@RAW
@pytest.mark.parametrize("name", ["outputs/" + "d/" * 300 + "x", "outputs/" + "n" * 5000])
def test_names_nested_too_deep_or_too_long_are_refused(served: Served, arena: Arena, name: str, raw: bool) -> None:
    refused(served, arena, tar_gz(*streams(), regular(name)), raw=raw)


@RAW
def test_a_name_appearing_twice_is_refused(served: Served, arena: Arena, raw: bool) -> None:
    error = refused(served, arena, tar_gz(*streams(), regular("stdout", b"second")), raw=raw)
    assert "appears twice" in str(error)


def test_control_characters_in_names_are_escaped_in_the_error(served: Served, arena: Arena) -> None:
    error = refused(served, arena, tar_gz(regular("/\x1b[2J\x1b]0;owned\x07evil")), raw=False)
    assert "\x1b" not in str(error) and "\x07" not in str(error)
    assert "\\x1b" in str(error)


@RAW
def test_odd_but_harmless_names_are_extracted(served: Served, arena: Arena, raw: bool) -> None:
    names = ["outputs/\u202etxt.exe", "outputs/new\nline", "outputs/sp ace", "outputs/ümlaut", "outputs/back\\slash"]
    body = tar_gz(*streams(), directory("outputs"), *(regular(name, name.encode()) for name in names))
    out = download_results([item(served, body)], arena.out, raw=raw)
    base = out / "raw" / "e-1" if raw else out
    for name in names:
        assert (base / name).read_bytes() == name.encode()
    arena.assert_untouched()


# -- symbolic links ----------------------------------------------------------------------------------------


@RAW
@pytest.mark.parametrize("case", ["absolute", "relative", "relative-from-deep", "dotdot-only"])
def test_a_symlink_leading_outside_is_refused(served: Served, arena: Arena, case: str, raw: bool) -> None:
    members = {
        "absolute": [link("outputs/passwd", str(arena.root / "victim" / "passwd"))],
        "relative": [link("outputs/up", "../../..")],
        "relative-from-deep": [directory("outputs/a/b"), link("outputs/a/b/up", "../../../../victim")],
        "dotdot-only": [link("up", "..")],
    }[case]
    refused(served, arena, tar_gz(*streams(), directory("outputs"), *members), raw=raw)


@RAW
@pytest.mark.parametrize("target_kind", ["absolute", "relative"])
def test_a_file_written_through_a_symlink_leading_outside_is_refused(served: Served, arena: Arena,
                                                                     target_kind: str, raw: bool) -> None:
    target = str(arena.root / "victim") if target_kind == "absolute" else "../../../../victim"
    body = tar_gz(*streams(), link("outputs", target), regular("outputs/passwd", b"pwned"))
    refused(served, arena, body, raw=raw)


@RAW
def test_a_file_written_through_a_symlink_to_a_folder_inside_is_refused(served: Served, arena: Arena,
                                                                       raw: bool) -> None:
    """The link leads inside, but writing through links is never done: the archive is refused."""
    body = tar_gz(*streams(), directory("outputs/real"), link("outputs/alias", "real"),
                  regular("outputs/alias/x.txt", b"x"))
    error = refused(served, arena, body, raw=raw)
    assert "through a link" in str(error)


@RAW
def test_a_symlink_escaping_through_another_symlink_is_refused(served: Served, arena: Arena, raw: bool) -> None:
    """`a -> .` and `b -> a/..`: each fine by its text, but b leads to the parent of the folder."""
    body = tar_gz(*streams(), link("a", "."), link("b", "a/.."))
    error = refused(served, arena, body, raw=raw)
    assert "through other links" in str(error)


@RAW
def test_a_symlink_replaced_by_a_file_or_folder_is_refused(served: Served, arena: Arena, raw: bool) -> None:
    body = tar_gz(*streams(), link("outputs", "."), directory("outputs"))
    refused(served, arena, body, raw=raw)


@RAW
def test_symlinks_that_stay_inside_are_kept_as_links(served: Served, arena: Arena, raw: bool) -> None:
    body = tar_gz(*streams(), directory("outputs/sub"), regular("outputs/sub/data.txt", b"data"),
                  link("outputs/latest", "sub/data.txt"), link("outputs/sub/up", "../sub"),
                  link("outputs/dangling", "missing.txt"), link("outputs/self", "self"))
    out = download_results([item(served, body)], arena.out, raw=raw)
    base = out / "raw" / "e-1" if raw else out
    assert os.readlink(base / "outputs" / "latest") == "sub/data.txt"
    assert (base / "outputs" / "latest").read_bytes() == b"data"
    assert os.readlink(base / "outputs" / "sub" / "up") == "../sub"
    assert os.readlink(base / "outputs" / "dangling") == "missing.txt"
    assert os.readlink(base / "outputs" / "self") == "self"
    arena.assert_untouched()


# -- hard links, devices, FIFOs, modes ---------------------------------------------------------------------


@RAW
@pytest.mark.parametrize("target", ["/etc/passwd", "../../victim/passwd", "victim/passwd", "stdout-later", ""])
def test_a_hard_link_to_anything_but_an_earlier_file_is_refused(served: Served, arena: Arena, target: str,
                                                                raw: bool) -> None:
    target = target.replace("victim", str(arena.root / "victim")) if target.startswith("victim") else target
    body = tar_gz(*streams(), link("outputs/passwd", target, tarfile.LNKTYPE), regular("stdout-later", b"x"))
    refused(served, arena, body, raw=raw)


@RAW
def test_a_hard_link_to_an_earlier_file_is_a_copy(served: Served, arena: Arena, raw: bool) -> None:
    body = tar_gz(*streams(), directory("outputs"), regular("outputs/a.txt", b"shared", 0o640),
                  link("outputs/b.txt", "outputs/a.txt", tarfile.LNKTYPE))
    out = download_results([item(served, body)], arena.out, raw=raw)
    base = out / "raw" / "e-1" if raw else out
    assert (base / "outputs" / "b.txt").read_bytes() == b"shared"
    assert (base / "outputs" / "a.txt").stat().st_nlink == 1
    assert not (base / "outputs" / "b.txt").is_symlink()
    arena.assert_untouched()


@RAW
@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE],
                         ids=["char-device", "block-device", "fifo", "contiguous"])
def test_devices_and_fifos_are_refused(served: Served, arena: Arena, kind: bytes, raw: bool) -> None:
    error = refused(served, arena, tar_gz(*streams(), special("outputs/thing", kind)), raw=raw)
    assert "outputs/thing" in str(error)


@RAW
def test_a_gnu_sparse_file_is_refused(served: Served, arena: Arena, raw: bool) -> None:
    info, _ = regular("outputs/sparse", b"")
    info.type = tarfile.GNUTYPE_SPARSE
    refused(served, arena, tar_gz(*streams(), (info, b""), fmt=tarfile.GNU_FORMAT), raw=raw)


@RAW
def test_setuid_setgid_sticky_and_group_write_are_stripped(served: Served, arena: Arena, raw: bool) -> None:
    body = tar_gz(*streams(), directory("outputs", 0o7777), regular("outputs/suid", b"#!/bin/sh\n", 0o6777),
                  regular("outputs/plain", b"p", 0o4644), regular("outputs/private", b"q", 0o000))
    out = download_results([item(served, body)], arena.out, raw=raw)
    base = out / "raw" / "e-1" if raw else out
    modes = {name: stat.S_IMODE((base / "outputs" / name).stat().st_mode) for name in ("suid", "plain", "private")}
    assert all(mode & 0o7022 == 0 for mode in modes.values()), modes
    assert modes["suid"] & 0o100  # the owner can still run it
    assert modes["private"] & 0o600 == 0o600  # and can read and remove what it got
    assert stat.S_IMODE((base / "outputs").stat().st_mode) & 0o7000 == 0
    arena.assert_untouched()


@RAW
def test_ownership_is_not_taken_from_the_archive(served: Served, arena: Arena, raw: bool) -> None:
    info, data = regular("outputs/owned", b"o")
    info.uid, info.gid, info.uname, info.gname = 4242, 4343, "mallory", "evil"
    out = download_results([item(served, tar_gz(*streams(), (info, data)))], arena.out, raw=raw)
    base = out / "raw" / "e-1" if raw else out
    assert (base / "outputs" / "owned").stat().st_uid == os.getuid()


# -- sizes and counts --------------------------------------------------------------------------------------


@RAW
def test_too_many_members_are_refused(served: Served, arena: Arena, raw: bool) -> None:
    members = [regular(f"m{i}", b"") for i in range(60)]
    error = refused(served, arena, tar_gz(*members), raw=raw, max_members=50)
    assert "more than 50 entries" in str(error)


def test_as_many_members_as_allowed_are_fine(served: Served, arena: Arena) -> None:
    members = [regular(f"outputs/m{i}", b"") for i in range(50)]
    out = download_results([item(served, tar_gz(*members))], arena.out, max_members=50)
    assert len(list((out / "outputs").iterdir())) == 50
    assert MAX_MEMBERS >= 10_000  # the default leaves room for real results


def declared_but_absent(name: str, declared: int) -> bytes:
    """A tar stream whose one member declares `declared` bytes but holds only a few."""
    info = tarfile.TarInfo(name)
    info.size = declared
    return gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT) + b"x" * 1024)


@RAW
def test_a_member_declaring_a_huge_size_is_refused_before_reading_it(served: Served, arena: Arena,
                                                                     raw: bool) -> None:
    started = time.monotonic()
    error = refused(served, arena, declared_but_absent("outputs/huge", 1 << 50), raw=raw)
    assert "expands past" in str(error)
    assert time.monotonic() - started < 5


def zeros_archive(size: int) -> bytes:
    return tar_gz(*streams(), regular("outputs/zeros", bytes(size)))


@RAW
def test_a_decompression_bomb_is_refused_with_an_explicit_limit(served: Served, arena: Arena, raw: bool) -> None:
    body = zeros_archive(16 << 20)
    assert len(body) < 100 << 10
    error = refused(served, arena, body, raw=raw, max_bytes=1 << 20)
    assert f"expands past {1 << 20} bytes" in str(error)


@RAW
def test_many_members_together_passing_the_limit_are_refused(served: Served, arena: Arena, raw: bool) -> None:
    body = tar_gz(*(regular(f"outputs/part{i}", bytes(100 << 10)) for i in range(12)))
    refused(served, arena, body, raw=raw, max_bytes=1 << 20)


@RAW
def test_hard_link_copies_count_towards_the_limit(served: Served, arena: Arena, raw: bool) -> None:
    members = [regular("outputs/big", bytes(400 << 10))]
    members += [link(f"outputs/copy{i}", "outputs/big", tarfile.LNKTYPE) for i in range(5)]
    refused(served, arena, tar_gz(*members), raw=raw, max_bytes=1 << 20)


def test_the_default_limit_is_a_ratio_of_the_compressed_size(served: Served, arena: Arena,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    body = zeros_archive(16 << 20)  # about 1000 times smaller compressed
    monkeypatch.setattr(shoal.results, "MIN_EXTRACTED_BYTES", 0)
    error = refused(served, arena, body, raw=False)
    assert f"expands past {shoal.results.EXPANSION_RATIO * len(body)} bytes" in str(error)


def test_the_default_limit_allows_small_compressible_results(served: Served, arena: Arena) -> None:
    out = download_results([item(served, zeros_archive(16 << 20))], arena.out)
    assert (out / "outputs" / "zeros").stat().st_size == 16 << 20


@RAW
def test_an_oversized_extended_header_is_refused_without_reading_it(served: Served, arena: Arena,
                                                                    raw: bool) -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 1 << 30
    body = gzip.compress(header.tobuf(format=tarfile.USTAR_FORMAT) + b"9 a=b\n" * 100)
    refused(served, arena, body, raw=raw)


@RAW
def test_a_long_chain_of_extended_headers_is_refused(served: Served, arena: Arena, raw: bool) -> None:
    chain = b""
    for _ in range(3000):
        header = tarfile.TarInfo("././@LongLink")
        header.type = tarfile.GNUTYPE_LONGNAME
        header.size = 2
        chain += header.tobuf(format=tarfile.USTAR_FORMAT) + b"x\0".ljust(512, b"\0")
    refused(served, arena, gzip.compress(chain + tar_bytes(regular("stdout", b"ok"))), raw=raw)


def test_a_download_larger_than_its_recorded_size_is_cut_short(served: Served, arena: Arena) -> None:
    body = os.urandom(4 << 20)
    with pytest.raises(ResultsError, match="the gateway recorded 1000"):
        download_results([item(served, body, size=1000)], arena.out)
    arena.assert_untouched()
    assert arena.contents() == set()


# -- broken streams and digests ----------------------------------------------------------------------------


@RAW
@pytest.mark.parametrize("body", [
    b"this is not gzip",
    b"",
    b"\x1f\x8b",
    gzip.compress(b"plain text, not a tar stream" * 100),
    gzip.compress(os.urandom(10_000)),
], ids=["garbage", "empty", "gzip-magic-only", "gzip-of-text", "gzip-of-noise"])
def test_something_that_is_not_a_tar_gz_is_refused(served: Served, arena: Arena, body: bytes, raw: bool) -> None:
    refused(served, arena, body, raw=raw, match="could not be extracted")


def good_archive() -> bytes:
    return tar_gz(*streams(b"hello\n" * 2000), directory("outputs"),
                  regular("outputs/data.bin", os.urandom(200_000)))


@RAW
@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9, 0.999])
def test_a_truncated_archive_is_refused(served: Served, arena: Arena, cut: float, raw: bool) -> None:
    body = good_archive()
    refused(served, arena, body[: int(len(body) * cut)], raw=raw)


@RAW
def test_an_archive_missing_only_its_gzip_trailer_is_refused(served: Served, arena: Arena, raw: bool) -> None:
    refused(served, arena, good_archive()[:-8], raw=raw)


@RAW
def test_an_archive_with_a_wrong_crc_is_refused(served: Served, arena: Arena, raw: bool) -> None:
    body = bytearray(good_archive())
    body[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    refused(served, arena, bytes(body), raw=raw)


@RAW
def test_data_after_the_end_of_the_tar_stream_is_refused(served: Served, arena: Arena, raw: bool) -> None:
    body = gzip.compress(tar_bytes(*streams()) + b"hidden payload" * 100)
    refused(served, arena, body, raw=raw, match="after the end")


@RAW
def test_a_wrong_sha256_is_refused_before_extraction(served: Served, arena: Arena, raw: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    extracted: list[Path] = []
    monkeypatch.setattr(shoal.results, "_extract", lambda archive, *args, **kwargs: extracted.append(archive))
    body = tar_gz(*streams(), regular("../../escaped.txt"))
    hostile = item(served, body, sha256=hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(ResultsError, match="SHA-256"):
        download_results([hostile], arena.out, raw=raw)
    assert extracted == []
    arena.assert_untouched()
    assert arena.contents() == set()


@pytest.mark.parametrize("params", [
    {"SHA256": "not-hex"},
    {"SHA256": 12},
    {"Size": "12"},
    {"Size": -1},
    {"PartitionIndex": "0"},
    {"ExecutionID": "e-1\n"},
    {"ExecutionID": "../e"},
    {"PreSignedURL": None},
    {"PreSignedURL": "file:///etc/passwd"},
    {"PreSignedURL": "http://[::1"},
])
def test_an_unusable_result_item_is_a_results_error(served: Served, arena: Arena, params: dict[str, Any]) -> None:
    hostile = item(served, tar_gz(*streams()))
    hostile["Params"].update(params)
    with pytest.raises(ResultsError):
        download_results([hostile], arena.out)
    arena.assert_untouched()
    assert arena.contents() == set()


@pytest.mark.parametrize("hostile", [None, "x", {"Params": None}, {"Params": []}])
def test_a_malformed_result_item_is_a_results_error(arena: Arena, hostile: Any) -> None:
    with pytest.raises(ResultsError):
        download_results([hostile], arena.out)


def test_an_http_error_body_is_shortened_and_printable(served: Served, arena: Arena) -> None:
    denied = item(served, b"\x1b]0;owned\x07\x1b[2J<Error>AccessDenied</Error>" + b"x" * 100_000, status=403)
    with pytest.raises(ResultsError, match="HTTP 403") as raised:
        download_results([denied], arena.out)
    assert "\x1b" not in str(raised.value) and "AccessDenied" in str(raised.value)
    assert len(str(raised.value)) < 400


# -- the Bacalhau-style merge of several executions --------------------------------------------------------


def merged(served: Served, arena: Arena, *archives: bytes, raw: bool = False) -> Path:
    items = [item(served, body, f"e-{index}", index) for index, body in enumerate(archives)]
    return download_results(items, arena.out, raw=raw)


def test_a_link_left_by_one_execution_is_never_written_through_by_another(served: Served, arena: Arena) -> None:
    first = tar_gz(*streams(b"0\n"), link("data", "outputs"), directory("outputs"))
    second = tar_gz(*streams(b"1\n"), directory("data"), regular("data/x.txt", b"through the link"))
    with pytest.raises(ResultsError, match=r"link or a file\. Try --raw"):
        merged(served, arena, first, second)
    arena.assert_untouched()
    assert not (arena.out / "outputs" / "x.txt").exists()


def test_links_that_escape_only_once_merged_are_removed_and_refused(served: Served, arena: Arena) -> None:
    """`b -> a/..` from one execution and `a -> .` from another: each archive is fine on its own."""
    first = tar_gz(*streams(b"0\n"), link("b", "a/.."))
    second = tar_gz(*streams(b"1\n"), link("a", "."))
    with pytest.raises(ResultsError, match="lead outside"):
        merged(served, arena, first, second)
    arena.assert_untouched()
    assert not (arena.out / "b").is_symlink()


def test_the_same_links_are_fine_kept_raw(served: Served, arena: Arena) -> None:
    first = tar_gz(*streams(b"0\n"), link("b", "a/.."))
    second = tar_gz(*streams(b"1\n"), link("a", "."))
    out = merged(served, arena, first, second, raw=True)
    assert os.readlink(out / "raw" / "e-0" / "b") == "a/.."
    arena.assert_untouched()


def test_a_file_where_another_execution_has_a_folder_is_refused(served: Served, arena: Arena) -> None:
    first = tar_gz(*streams(b"0\n"), regular("outputs", b"a file"))
    second = tar_gz(*streams(b"1\n"), directory("outputs"), regular("outputs/x", b"x"))
    with pytest.raises(ResultsError, match="Try --raw"):
        merged(served, arena, first, second)
    arena.assert_untouched()
    assert (arena.out / "outputs").read_bytes() == b"a file"


@pytest.mark.parametrize("members", [
    [link("stdout", "outputs/x"), directory("outputs"), regular("outputs/x", b"x"), regular("exitCode", b"0")],
    [directory("stdout"), regular("stdout/x", b"x")],
], ids=["stdout-link", "stdout-folder"])
def test_streams_that_are_not_regular_files_are_refused(served: Served, arena: Arena,
                                                        members: list[Member]) -> None:
    with pytest.raises(ResultsError, match="stdout is not a regular file"):
        merged(served, arena, tar_gz(*members))
    arena.assert_untouched()


def test_two_results_for_one_execution_are_refused(served: Served, arena: Arena) -> None:
    body = tar_gz(*streams())
    items = [item(served, body, "e-same", 0), item(served, body, "e-same", 1)]
    for raw in (False, True):
        with pytest.raises(ResultsError, match="same execution"):
            download_results(items, arena.out, raw=raw)
    arena.assert_untouched()


def test_a_refused_second_execution_leaves_the_first_merged(served: Served, arena: Arena) -> None:
    """Executions are merged one by one: a later refusal keeps what was laid out, never anything outside."""
    first = tar_gz(*streams(b"0\n"), directory("outputs"), regular("outputs/a.txt", b"A"))
    second = tar_gz(*streams(b"1\n"), regular("../../escaped.txt"))
    with pytest.raises(ResultsError, match="could not be extracted safely"):
        merged(served, arena, first, second)
    arena.assert_untouched()
    assert arena.contents() == {"stdout", "stderr", "exitCode", "outputs", "outputs/a.txt"}
    assert (arena.out / "stdout").read_bytes() == b"0\n"


def test_a_raw_folder_that_already_exists_is_not_overwritten(served: Served, arena: Arena) -> None:
    (arena.out / "raw" / "e-0").mkdir(parents=True)
    (arena.out / "raw" / "e-0" / "stdout").write_bytes(b"before")
    with pytest.raises(ResultsError, match="already exists"):
        merged(served, arena, tar_gz(*streams(b"after")), raw=True)
    assert (arena.out / "raw" / "e-0" / "stdout").read_bytes() == b"before"


def test_an_existing_link_in_the_output_folder_is_not_followed(served: Served, arena: Arena) -> None:
    """A stream file or folder in out_dir that is a link (left there by anyone) is not written through."""
    arena.out.mkdir()
    os.symlink(arena.root / "victim", arena.out / "outputs")
    arena.before = arena.snapshot()
    with pytest.raises(ResultsError, match="Try --raw"):
        merged(served, arena, tar_gz(*streams(), directory("outputs"), regular("outputs/passwd")))
    assert arena.snapshot() == arena.before
    for name in ("stdout", "stderr", "exitCode"):
        (arena.out / name).unlink(missing_ok=True)
    os.symlink(arena.root / "victim" / "passwd", arena.out / "stdout")
    with pytest.raises(ResultsError):
        merged(served, arena, tar_gz(*streams(b"appended?")))
    assert arena.snapshot() == arena.before


@pytest.mark.parametrize("raw", [False, True], ids=["merged", "raw"])
def test_a_hostile_archive_is_quick_to_refuse(served: Served, arena: Arena, raw: bool) -> None:
    """Many small entries, then an escape: refused in bounded time, after writing only inside."""
    members = [regular(f"outputs/f{i}", b"x") for i in range(2000)] + [regular("../escaped.txt")]
    body = tar_gz(*members)
    started = time.monotonic()
    refused(served, arena, body, raw=raw)
    assert time.monotonic() - started < 20
