"""The managed publisher: the results archive's layout, links that point outside it, and the presigned upload,
received by a real HTTP server standing in for the gateway and the object store."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from compute_agent.errors import PublishError
from compute_agent.gateway_client import GatewayClient
from compute_agent.publish import archive, publish
from tests.compute_agent.http_recorder import Recorded, RecordingServer, Reply

EXECUTION = "exec-0123"
PUBLISH_PATH = f"/api/v1/compute/executions/{EXECUTION}/publish"
OBJECT_PATH = "/bucket/results/job-1/exec-0123.tar.gz"


def results_dir(tmp_path: Path) -> Path:
    """A results dir as an execution leaves it: stdout, stderr, exitCode and two ResultPaths."""
    results = tmp_path / "exec" / "results"
    (results / "outputs" / "sub").mkdir(parents=True)
    (results / "metrics").mkdir()
    (results / "stdout").write_text("hello\n")
    (results / "stderr").write_bytes(b"")
    (results / "exitCode").write_text("0")
    (results / "outputs" / "answer.txt").write_text("forty-two\n")
    (results / "outputs" / "sub" / "deep.bin").write_bytes(bytes(range(256)) * 64)
    return results


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


def read_member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def test_the_archive_holds_the_results_dir_relative_to_it(tmp_path: Path) -> None:
    results = results_dir(tmp_path)
    destination = tmp_path / "results.tar.gz"
    size, sha256 = archive(results, destination)
    data = destination.read_bytes()
    assert size == len(data)
    assert sha256 == hashlib.sha256(data).hexdigest()

    found = members(data)
    assert sorted(found) == ["exitCode", "metrics", "outputs", "outputs/answer.txt", "outputs/sub",
                             "outputs/sub/deep.bin", "stderr", "stdout"]
    assert {name for name, m in found.items() if m.isdir()} == {"metrics", "outputs", "outputs/sub"}
    assert all(m.isfile() for name, m in found.items() if name not in ("metrics", "outputs", "outputs/sub"))
    assert read_member(data, "stdout") == b"hello\n"
    assert read_member(data, "stderr") == b""
    assert read_member(data, "exitCode") == b"0"
    assert read_member(data, "outputs/answer.txt") == b"forty-two\n"
    assert read_member(data, "outputs/sub/deep.bin") == bytes(range(256)) * 64


def test_links_pointing_outside_are_stored_as_links_never_followed(tmp_path: Path) -> None:
    results = results_dir(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET of the agent host\n")
    os.symlink("/etc/passwd", results / "outputs" / "passwd")
    os.symlink(outside, results / "outputs" / "outside_dir")
    os.symlink("../../../outside/secret.txt", results / "outputs" / "relative_secret")

    destination = tmp_path / "results.tar.gz"
    archive(results, destination)
    data = destination.read_bytes()
    found = members(data)

    assert found["outputs/passwd"].issym() and found["outputs/passwd"].linkname == "/etc/passwd"
    assert found["outputs/outside_dir"].issym() and found["outputs/outside_dir"].linkname == str(outside)
    assert found["outputs/relative_secret"].issym()
    assert found["outputs/relative_secret"].linkname == "../../../outside/secret.txt"
    assert not [name for name in found if name.startswith("outputs/outside_dir/")]
    assert all(m.size == 0 for m in found.values() if m.issym())
    tar_bytes = gzip.decompress(data)
    assert b"TOP SECRET" not in tar_bytes
    assert Path("/etc/passwd").read_bytes()[:64] not in tar_bytes


class ObjectStoreAndGateway:
    """Answers the agent's publish call with a presigned PUT to itself (S3-style signed headers) and answers
    the PUTs with the statuses in `put_statuses`, then 200."""

    def __init__(self, put_statuses: list[int] | None = None) -> None:
        self.put_statuses = list(put_statuses or [])
        self.server = RecordingServer(self.respond)

    def respond(self, request: Recorded) -> Reply:
        if request.method == "POST" and request.path == PUBLISH_PATH:
            declared = request.json()
            checksum = base64.b64encode(bytes.fromhex(declared["SHA256"])).decode()
            return Reply.of_json({
                "URL": f"{self.server.url}{OBJECT_PATH}?X-Amz-Signature=abc&n={len(self.server.requests)}",
                "Method": "PUT", "Key": OBJECT_PATH,
                "Headers": {"Content-Length": str(declared["Size"]), "x-amz-checksum-sha256": checksum,
                            "x-amz-sdk-checksum-algorithm": "SHA256"},
            })
        if request.method == "PUT" and request.path.startswith(OBJECT_PATH + "?"):
            status = self.put_statuses.pop(0) if self.put_statuses else 200
            return Reply(status, b"<Error>refused</Error>" if status >= 400 else b"")
        return Reply.of_json({"Message": f"unexpected {request.method} {request.path}"}, 404)

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path.split("?")[0]) for r in self.server.snapshot()]


def publish_to(store: ObjectStoreAndGateway, results: Path, scratch: Path) -> None:
    async def main() -> None:
        gateway = GatewayClient(store.server.url, poll_seconds=1)
        gateway.credential = "node-credential"
        try:
            await publish(gateway, EXECUTION, results, scratch)
        finally:
            await gateway.aclose()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_the_archive_is_put_to_the_presigned_url_with_its_declared_size_and_digest(tmp_path: Path) -> None:
    results = results_dir(tmp_path)
    store = ObjectStoreAndGateway()
    with store.server.running():
        publish_to(store, results, tmp_path / "exec")
    assert store.calls() == [("POST", PUBLISH_PATH), ("PUT", OBJECT_PATH)]
    ask, put = store.server.snapshot()

    assert ask.headers["authorization"] == "Bearer node-credential"
    declared = ask.json()
    assert declared["Size"] == len(put.body)
    assert declared["SHA256"] == hashlib.sha256(put.body).hexdigest()

    assert put.headers["content-length"] == str(len(put.body))
    assert "chunked" not in put.headers.get("transfer-encoding", "")
    assert put.headers["x-amz-checksum-sha256"] == base64.b64encode(hashlib.sha256(put.body).digest()).decode()
    assert put.headers["x-amz-sdk-checksum-algorithm"] == "SHA256"
    assert "authorization" not in put.headers, "the node credential was sent to the object store"
    assert put.body == (tmp_path / "exec" / "results.tar.gz").read_bytes()
    assert sorted(members(put.body)) == sorted(str(p.relative_to(results)) for p in results.rglob("*"))


@pytest.mark.timeout(60)
def test_a_refused_upload_asks_for_a_new_url_and_puts_again(tmp_path: Path) -> None:
    store = ObjectStoreAndGateway(put_statuses=[403])  # e.g. the presigned URL expired
    with store.server.running():
        publish_to(store, results_dir(tmp_path), tmp_path / "exec")
    assert store.calls() == [("POST", PUBLISH_PATH), ("PUT", OBJECT_PATH)] * 2
    first_put, second_put = (r for r in store.server.snapshot() if r.method == "PUT")
    assert first_put.path != second_put.path  # the second URL is the new one
    assert first_put.body == second_put.body


@pytest.mark.timeout(60)
def test_a_client_error_on_upload_is_not_retried(tmp_path: Path) -> None:
    store = ObjectStoreAndGateway(put_statuses=[400])
    with store.server.running(), pytest.raises(PublishError, match="HTTP 400"):
        publish_to(store, results_dir(tmp_path), tmp_path / "exec")
    assert store.calls() == [("POST", PUBLISH_PATH), ("PUT", OBJECT_PATH)]


@pytest.mark.timeout(60)
def test_a_gateway_refusal_to_publish_is_a_publish_error(tmp_path: Path) -> None:
    server = RecordingServer(lambda request: Reply.of_json({"Message": "Size: results are limited"}, 413))
    store = ObjectStoreAndGateway()
    store.server = server
    with server.running(), pytest.raises(PublishError, match="Size: results are limited"):
        publish_to(store, results_dir(tmp_path), tmp_path / "exec")
    assert store.calls() == [("POST", PUBLISH_PATH)]
    assert json.loads(server.snapshot()[0].body)["Size"] == (tmp_path / "exec" / "results.tar.gz").stat().st_size
