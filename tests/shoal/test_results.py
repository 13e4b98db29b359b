"""`shoal.results.download_results`: hand-made archives served over real HTTP from a loopback thread,
fetched, verified, extracted and merged into the `bacalhau job get` layout."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import ResultsError
from shoal.results import download_results
from tests.conftest import free_port

# -- a tiny HTTP server: path -> (status, body) ------------------------------------------------------------


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


# -- archives ----------------------------------------------------------------------------------------------


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def directory(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def char_device(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def result_archive(stdout: bytes, stderr: bytes = b"", exit_code: bytes = b"0",
                   outputs: dict[str, bytes] | None = None) -> bytes:
    members = [regular("exitCode", exit_code), regular("stderr", stderr), regular("stdout", stdout)]
    if outputs:
        members.append(directory("outputs"))
        members += [regular(f"outputs/{name}", data) for name, data in outputs.items()]
    return tar_gz(*members)


def item(served: Served, body: bytes, execution_id: str = "e-1", partition: int = 0, *,
         sha256: str | None = None, size: int | None = None, status: int = 200) -> dict[str, Any]:
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


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def outside(tmp_path: Path, out_dir: Path) -> set[str]:
    """Everything under tmp_path that is not out_dir or inside it."""
    return {
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
        if p != out_dir and out_dir not in p.parents
    }


# -- layout ------------------------------------------------------------------------------------------------


def test_a_result_is_laid_out_like_bacalhau_job_get(served: Served, tmp_path: Path) -> None:
    body = result_archive(b"hello\n", b"warn\n", b"0", {"x.txt": b"x data", "y.bin": bytes(range(256))})
    out = download_results([item(served, body)], tmp_path / "out")

    assert out == tmp_path / "out"
    assert (out / "stdout").read_bytes() == b"hello\n"
    assert (out / "stderr").read_bytes() == b"warn\n"
    assert (out / "exitCode").read_bytes() == b"0"
    assert (out / "outputs" / "x.txt").read_bytes() == b"x data"
    assert (out / "outputs" / "y.bin").read_bytes() == bytes(range(256))
    assert files_under(out) == {"stdout", "stderr", "exitCode", "outputs", "outputs/x.txt", "outputs/y.bin"}


def test_partitions_append_streams_in_partition_order_and_merge_outputs(served: Served, tmp_path: Path) -> None:
    second = item(served, result_archive(b"from 1\n", b"err 1\n", outputs={"b.txt": b"B"}), "e-b", 1)
    first = item(served, result_archive(b"from 0\n", b"err 0\n", outputs={"a.txt": b"A"}), "e-a", 0)
    out = download_results([second, first], tmp_path / "out")  # listed out of order on purpose

    assert (out / "stdout").read_bytes() == b"from 0\nfrom 1\n"
    assert (out / "stderr").read_bytes() == b"err 0\nerr 1\n"
    assert (out / "outputs" / "a.txt").read_bytes() == b"A"
    assert (out / "outputs" / "b.txt").read_bytes() == b"B"
    assert not (out / "raw").exists()


def test_a_colliding_output_file_is_an_error_that_suggests_raw(served: Served, tmp_path: Path) -> None:
    items = [
        item(served, result_archive(b"0\n", outputs={"x.txt": b"partition 0"}), "e-a", 0),
        item(served, result_archive(b"1\n", outputs={"x.txt": b"partition 1"}), "e-b", 1),
    ]
    with pytest.raises(ResultsError, match="--raw") as raised:
        download_results(items, tmp_path / "out")
    assert "x.txt" in str(raised.value)
    assert (tmp_path / "out" / "outputs" / "x.txt").read_bytes() == b"partition 0"  # never overwritten


def test_raw_keeps_each_execution_apart(served: Served, tmp_path: Path) -> None:
    items = [
        item(served, result_archive(b"0\n", outputs={"x.txt": b"partition 0"}), "e-a", 0),
        item(served, result_archive(b"1\n", outputs={"x.txt": b"partition 1"}), "e-b", 1),
    ]
    out = download_results(items, tmp_path / "out", raw=True)

    assert (out / "raw" / "e-a" / "outputs" / "x.txt").read_bytes() == b"partition 0"
    assert (out / "raw" / "e-b" / "outputs" / "x.txt").read_bytes() == b"partition 1"
    assert (out / "raw" / "e-a" / "stdout").read_bytes() == b"0\n"
    assert (out / "raw" / "e-b" / "stdout").read_bytes() == b"1\n"
    assert sorted(p.name for p in out.iterdir()) == ["raw"]


# -- hostile archives --------------------------------------------------------------------------------------


def hostile_members(case: str, tmp_path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    escape = tmp_path / "escaped.txt"
    return {
        "dotdot": [regular("stdout", b"ok"), regular("../escape", b"pwned"), regular("../../escaped.txt", b"pwned")],
        "absolute": [regular("stdout", b"ok"), regular(str(escape), b"pwned")],
        "symlink-absolute": [link("outputs", str(tmp_path), tarfile.SYMTYPE), regular("outputs/escaped.txt", b"pwned")],
        "symlink-relative": [link("outputs", "../../../..", tarfile.SYMTYPE), regular("outputs/escaped.txt", b"pwned")],
        "hardlink": [link("passwd", "/etc/passwd", tarfile.LNKTYPE)],
        "char-device": [char_device("null")],
    }[case]


@pytest.mark.parametrize("raw", [False, True], ids=["merged", "raw"])
@pytest.mark.parametrize("case", [
    "dotdot",
    "absolute",
    "symlink-absolute",
    "symlink-relative",
    "hardlink",
    "char-device",
])
def test_a_hostile_archive_is_refused(served: Served, tmp_path: Path, case: str, raw: bool) -> None:
    out = tmp_path / "a" / "b" / "out"
    body = tar_gz(*hostile_members(case, tmp_path))
    with pytest.raises(ResultsError, match="could not be extracted safely"):
        download_results([item(served, body)], out, raw=raw)
    assert outside(tmp_path, out) == {"a", "a/b"}
    assert not any(p.is_file() and p.read_bytes() == b"pwned" for p in out.rglob("*") if not p.is_symlink())


@pytest.mark.parametrize("raw", [False, True], ids=["merged", "raw"])
@pytest.mark.parametrize("case", ["absolute", "symlink-absolute", "symlink-relative", "hardlink", "dotdot"])
def test_a_hostile_archive_never_writes_outside_out_dir(served: Served, tmp_path: Path, case: str, raw: bool) -> None:
    """Whether or not the archive is refused, nothing it names is written outside out_dir."""
    out = tmp_path / "a" / "b" / "out"
    body = tar_gz(*hostile_members(case, tmp_path))
    with contextlib.suppress(ResultsError):
        download_results([item(served, body)], out, raw=raw)
    assert outside(tmp_path, out) == {"a", "a/b"}
    assert not (tmp_path / "escaped.txt").exists()
    for path in out.rglob("*"):
        if path.is_symlink():
            assert path.resolve().is_relative_to(out.resolve()), f"{path} points outside: {path.resolve()}"
        elif path.is_file():
            assert b"root:" not in path.read_bytes()


@pytest.mark.parametrize("raw", [False, True], ids=["merged", "raw"])
def test_a_hostile_execution_id_never_writes_outside_out_dir(served: Served, tmp_path: Path, raw: bool) -> None:
    out = tmp_path / "out"
    hostile = item(served, result_archive(b"ok\n", outputs={"x.txt": b"x"}), execution_id=str(tmp_path / "evil"))
    with contextlib.suppress(ResultsError):
        download_results([hostile], out, raw=raw)
    assert outside(tmp_path, out) == set()


# -- verification and HTTP errors --------------------------------------------------------------------------


def test_a_digest_mismatch_is_an_error(served: Served, tmp_path: Path) -> None:
    body = result_archive(b"hello\n")
    with pytest.raises(ResultsError, match="SHA-256"):
        download_results([item(served, body, sha256=hashlib.sha256(body + b"!").hexdigest())], tmp_path / "out")
    assert files_under(tmp_path / "out") == set()


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_size_mismatch_is_an_error(served: Served, tmp_path: Path, delta: int) -> None:
    body = result_archive(b"hello\n")
    with pytest.raises(ResultsError, match=f"{len(body)} bytes, the gateway recorded {len(body) + delta}"):
        download_results([item(served, body, size=len(body) + delta)], tmp_path / "out")
    assert files_under(tmp_path / "out") == set()


def test_an_http_error_is_a_results_error(served: Served, tmp_path: Path) -> None:
    denied = item(served, b"<Error><Code>AccessDenied</Code></Error>", status=403)
    with pytest.raises(ResultsError, match="HTTP 403") as raised:
        download_results([denied], tmp_path / "out")
    assert "AccessDenied" in str(raised.value)
    assert denied["Params"]["PreSignedURL"].removeprefix(served.base_url) in served.hits


def test_an_unreachable_url_is_a_results_error(tmp_path: Path) -> None:
    gone = {"Type": "s3PreSigned", "Params": {"PreSignedURL": f"http://127.0.0.1:{free_port()}/x", "ExecutionID": "e"}}
    with pytest.raises(ResultsError, match="downloading a result failed"):
        download_results([gone], tmp_path / "out", timeout=5)


def test_a_corrupt_archive_is_a_results_error(served: Served, tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="could not be extracted"):
        download_results([item(served, b"this is not gzip")], tmp_path / "out")


def test_no_items_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"^No results found"):
        download_results([], tmp_path / "out")
    assert not (tmp_path / "out").exists()
