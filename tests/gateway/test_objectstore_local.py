"""The embedded object store (gateway/objectstore/local.py) as served by a real `shoal serve` process at
`/api/v1/objects/<key>`: presigned URLs are obtained the way an agent and a user obtain them (register, poll,
publish, complete, results) and then used, misused and tampered with over real HTTP."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from gateway.objectstore.local import LocalObjectStore
from tests.conftest import Cluster, Gateway, wait_for
from tests.fakes import Claim, FakeAgent, result_archive, sha256

# -- helpers -----------------------------------------------------------------------------------------------


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def with_query(url: str, **changes: str | None) -> str:
    """The URL with query parameters changed (None removes one)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def assert_error(response: httpx.Response, status: int, code: str, message: str = "") -> dict[str, Any]:
    """The gateway's error shape: exactly {Status, Message, Code, RequestID}, the ID echoed in X-Request-ID."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"Status", "Message", "Code", "RequestID"}, body
    assert body["Status"] == status
    assert body["Code"] == code
    assert message in body["Message"], body
    assert body["RequestID"] and body["RequestID"] == response.headers["x-request-id"]
    return dict(body)


@dataclass
class Published:
    claim: Claim
    key: str
    put: dict[str, Any]
    get_url: str
    item: dict[str, Any]


def publish_and_complete(gateway: Gateway, agent: FakeAgent, data: bytes) -> Published:
    claim = agent.claim()
    target = agent.publish(claim.execution_id, len(data), sha256(data))
    uploaded = httpx.put(target["URL"], content=data, headers=target["Headers"])
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == {"Key": target["Key"], "Size": len(data)}
    completed = agent.complete(claim.execution_id)
    assert completed.status_code == 200, completed.text
    assert gateway.job(claim.job_id)["State"]["StateType"] == "Completed"
    [item] = gateway.http.get(f"/api/v1/orchestrator/jobs/{claim.job_id}/results").json()["Items"]
    return Published(claim, target["Key"], target, item["Params"]["PreSignedURL"], item)


def sign(secret: bytes, method: str, key: str, expires: int, size: str = "", digest: str = "") -> str:
    """The signing scheme of the module docstring: an HMAC over method, key, expiry, size and digest."""
    return hmac.new(secret, "\n".join((method, key, str(expires), size, digest)).encode(), hashlib.sha256).hexdigest()


def signing_key(gateway: Gateway) -> bytes:
    return bytes.fromhex((gateway.data_dir / "object-signing.key").read_text().strip())


def object_files(gateway: Gateway, job_id: str) -> set[str]:
    """Every file the store holds for this job's results, temporary upload files included."""
    root = gateway.data_dir / "objects" / "results" / job_id
    return {f"results/{job_id}/{p.relative_to(root)}" for p in root.rglob("*") if p.is_file()}


# A long lease, so no housekeeping sweep fails an execution while a test is between publish and complete.
LEASE = "30"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the tests that only read, refuse or add objects of their own jobs. A job is never
    retried on it (max_attempts=1), so no test's agent can claim another test's leftover execution."""
    running = Cluster(tmp_path_factory.mktemp("objects"))
    yield running.gateway(lease_seconds=LEASE, max_attempts="1")
    running.close()


@pytest.fixture
def agent(gw: Gateway) -> FakeAgent:
    return FakeAgent(gw)


# -- the happy path ----------------------------------------------------------------------------------------


def test_an_upload_with_the_signed_size_and_digest_is_served_back_byte_for_byte(gw: Gateway, agent: FakeAgent) -> None:
    data = os.urandom(300_000)
    published = publish_and_complete(gw, agent, data)

    assert published.key == f"results/{published.claim.job_id}/{published.claim.execution_id}.tar.gz"
    assert published.put["Headers"] == {"Content-Length": str(len(data))}
    assert published.item["Params"]["Size"] == len(data)
    assert published.item["Params"]["SHA256"] == sha256(data)
    assert published.get_url.startswith(f"{gw.url}/api/v1/objects/{published.key}?")
    assert (gw.data_dir / "objects" / published.key).read_bytes() == data

    response = httpx.get(published.get_url)
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["content-type"] == "application/gzip"
    assert int(response.headers["content-length"]) == len(data)


def test_a_published_archive_is_what_shoal_job_get_downloads(gw: Gateway, agent: FakeAgent, tmp_path: Path) -> None:
    published = publish_and_complete(gw, agent, result_archive(b"hello from the object store\n"))
    out = gw.download(published.claim.job_id, tmp_path / "out")
    assert (out / "stdout").read_bytes() == b"hello from the object store\n"
    assert (out / "exitCode").read_bytes() == b"0"


# -- refused URLs ------------------------------------------------------------------------------------------


def test_an_expired_get_url_is_refused(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(download_expiry="1", lease_seconds=LEASE)
    published = publish_and_complete(gateway, FakeAgent(gateway), b"expiring result")
    expires = int(query_of(published.get_url)["expires"])
    assert expires <= time.time() + 2

    wait_for(lambda: time.time() > expires + 1, timeout=10, what="the GET URL to expire")
    assert_error(httpx.get(published.get_url), 403, "Forbidden", "expired")

    # The object is still there: a URL signed with the same key and a longer life still reads it.
    fresh = LocalObjectStore.in_data_dir(gateway.data_dir, gateway.url).presign_get(published.key, 60)
    assert httpx.get(fresh).content == b"expiring result"


def test_an_expired_put_url_is_refused_and_stores_nothing(gw: Gateway, agent: FakeAgent) -> None:
    data = b"too late"
    claim = agent.claim()
    key = agent.publish(claim.execution_id, len(data), sha256(data))["Key"]
    # The gateway's own signing key (kept in its data dir), with a one-second life.
    signed = LocalObjectStore.in_data_dir(gw.data_dir, gw.url).presign_put(key, len(data), sha256(data), 1)
    expires = int(query_of(signed.url)["expires"])

    wait_for(lambda: time.time() > expires + 1, timeout=10, what="the PUT URL to expire")
    assert_error(httpx.put(signed.url, content=data, headers=signed.headers), 403, "Forbidden", "expired")
    assert object_files(gw, claim.job_id) == set()


def test_unsigned_urls_are_refused(gw: Gateway, agent: FakeAgent) -> None:
    published = publish_and_complete(gw, agent, b"data")
    bare = published.get_url.split("?", 1)[0]
    assert_error(httpx.get(bare), 403, "Forbidden", "not signed")
    assert_error(httpx.put(bare, content=b"data"), 403, "Forbidden", "not signed")
    assert_error(httpx.get(with_query(published.get_url, signature=None)), 403, "Forbidden")
    assert_error(httpx.get(with_query(published.get_url, expires="soon")), 403, "Forbidden")


@pytest.mark.parametrize("tamper", [
    lambda s: s[:-1] + ("0" if s[-1] != "0" else "1"),
    lambda s: s.upper(),
    lambda s: s[:32],
    lambda s: "",
], ids=["last-digit", "uppercase", "truncated", "empty"])
def test_a_tampered_signature_is_refused(gw: Gateway, agent: FakeAgent, tamper: Callable[[str], str]) -> None:
    published = publish_and_complete(gw, agent, b"data")
    signature = query_of(published.get_url)["signature"]
    assert_error(httpx.get(with_query(published.get_url, signature=tamper(signature))),
                 403, "Forbidden", "signature does not match")
    assert httpx.get(published.get_url).content == b"data"  # the untampered URL still works


def test_a_url_for_one_key_does_not_open_another(gw: Gateway, agent: FakeAgent) -> None:
    first = publish_and_complete(gw, agent, b"first object")
    second = publish_and_complete(gw, agent, b"second object")
    stolen = with_path(first.get_url, urlsplit(second.get_url).path)
    assert_error(httpx.get(stolen), 403, "Forbidden", "signature does not match")

    # Nor may a PUT URL for one key overwrite another object, even with a valid body for the signature.
    data = b"overwrite attempt"
    claim = agent.claim()
    target = agent.publish(claim.execution_id, len(data), sha256(data))
    redirected = with_path(target["URL"], urlsplit(second.get_url).path)
    assert_error(httpx.put(redirected, content=data, headers=target["Headers"]), 403, "Forbidden")
    assert httpx.get(second.get_url).content == b"second object"


def test_a_get_url_cannot_upload_and_a_put_url_cannot_download(gw: Gateway, agent: FakeAgent) -> None:
    published = publish_and_complete(gw, agent, b"original")
    assert_error(httpx.put(published.get_url, content=b"replaced"), 403, "Forbidden")
    # Claiming the other method in the query does not help: the method is under the signature.
    assert_error(httpx.put(with_query(published.get_url, method="PUT"), content=b"replaced"), 403, "Forbidden")
    assert_error(httpx.get(published.put["URL"]), 403, "Forbidden")
    assert_error(httpx.get(with_query(published.put["URL"], method="GET")), 403, "Forbidden")
    assert httpx.get(published.get_url).content == b"original"


def test_altering_the_signed_size_or_digest_is_refused(gw: Gateway, agent: FakeAgent) -> None:
    data, other = b"declared bytes", b"something quite different"
    claim = agent.claim()
    target = agent.publish(claim.execution_id, len(data), sha256(data))

    bigger = with_query(target["URL"], size=str(len(other)), sha256=sha256(other))
    assert_error(httpx.put(bigger, content=other), 403, "Forbidden", "signature does not match")
    resized = with_query(target["URL"], size=str(len(data) + 1))
    assert_error(httpx.put(resized, content=data + b"!"), 403, "Forbidden", "signature does not match")
    redigested = with_query(target["URL"], sha256=sha256(data[::-1]))
    assert_error(httpx.put(redigested, content=data[::-1]), 403, "Forbidden", "signature does not match")
    unsized = with_query(target["URL"], size=None, sha256=None)
    assert_error(httpx.put(unsized, content=data), 403, "Forbidden", "signature does not match")
    assert object_files(gw, claim.job_id) == set()

    # A GET URL carries no size or digest; adding them breaks its signature too.
    published = publish_and_complete(gw, agent, b"readable")
    assert_error(httpx.get(with_query(published.get_url, size="8")), 403, "Forbidden")
    assert_error(httpx.get(with_query(published.get_url, sha256=sha256(b"readable"))), 403, "Forbidden")


# -- refused uploads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "code", "message"), [
    (b"exactly the declared bytes!", 413, "PayloadTooLarge", "larger than the signed size"),
    (b"exactly the declared byte", 400, "BadRequest", "25 bytes, the URL was signed for 26"),
    (b"exactly the declared bytez", 400, "BadRequest", "SHA-256 does not match"),
], ids=["bigger", "smaller", "other-digest"])
def test_an_upload_that_breaks_its_signature_leaves_no_object_and_fails_completion(
    start_gateway: Callable[..., Gateway], body: bytes, status: int, code: str, message: str,
) -> None:
    gw = start_gateway(lease_seconds=LEASE)  # its own gateway: the default three attempts, so a retry
    agent = FakeAgent(gw)
    declared = b"exactly the declared bytes"
    assert len(declared) == 26
    claim = agent.claim()
    target = agent.publish(claim.execution_id, len(declared), sha256(declared))

    # Sent without the signed Content-Length header: the body's real length goes on the wire.
    assert_error(httpx.put(target["URL"], content=body), status, code, message)
    assert object_files(gw, claim.job_id) == set()  # neither the object, nor its digest, nor a leftover temporary file

    completed = agent.complete(claim.execution_id)
    assert_error(completed, 409, "Conflict", f"publish failed: no object at {target['Key']}")
    first, retry = gw.executions(claim.job_id)
    assert first["ID"] == claim.execution_id
    assert first["ComputeState"]["StateType"] == "Failed"
    assert "publish failed" in first["ComputeState"]["Message"]
    assert first["PublishedResult"] is None
    assert (retry["Attempt"], retry["ComputeState"]["StateType"]) == (2, "New")
    assert gw.job(claim.job_id)["State"]["StateType"] == "Running"
    assert gw.http.get(f"/api/v1/orchestrator/jobs/{claim.job_id}/results").json()["Items"] == []


def test_a_refused_upload_does_not_disturb_an_object_already_stored(gw: Gateway, agent: FakeAgent) -> None:
    data = b"the good upload"
    claim = agent.claim()
    target = agent.publish(claim.execution_id, len(data), sha256(data))
    assert httpx.put(target["URL"], content=data, headers=target["Headers"]).status_code == 200
    assert_error(httpx.put(target["URL"], content=b"the bad upload!"), 400, "BadRequest", "SHA-256")
    assert_error(httpx.put(target["URL"], content=data + b"tail"), 413, "PayloadTooLarge")
    assert object_files(gw, claim.job_id) == {target["Key"], target["Key"] + ".sha256"}
    assert (gw.data_dir / "objects" / target["Key"]).read_bytes() == data
    assert agent.complete(claim.execution_id).status_code == 200


# -- keys outside the store --------------------------------------------------------------------------------


TRAVERSALS = [
    "../object-signing.key",
    "../shoal.db",
    "results/../../object-signing.key",
    "results/../object-signing.key",
    "/etc/passwd",
    "results/./x.tar.gz",
]


@pytest.mark.parametrize("key", TRAVERSALS)
def test_a_traversing_key_is_not_found_even_with_a_valid_signature(gw: Gateway, agent: FakeAgent, key: str) -> None:
    """Signed with the gateway's own key, so only the key check stands between the URL and the file."""
    secret = signing_key(gw)
    published = publish_and_complete(gw, agent, b"data")
    query = query_of(published.get_url)
    assert sign(secret, "GET", published.key, int(query["expires"])) == query["signature"]  # the scheme is right

    expires = int(time.time()) + 600
    path = "/api/v1/objects/" + quote(key, safe="")  # %2F and %2E%2E: no client-side normalising
    get_query = {"method": "GET", "expires": str(expires), "signature": sign(secret, "GET", key, expires)}
    response = httpx.get(f"{gw.url}{path}?{urlencode(get_query)}")
    assert_error(response, 404, "NotFound")
    assert secret.hex().encode() not in response.content

    data = b"planted"
    put_query = {"method": "PUT", "expires": str(expires), "size": str(len(data)), "sha256": sha256(data),
                 "signature": sign(secret, "PUT", key, expires, str(len(data)), sha256(data))}
    assert_error(httpx.put(f"{gw.url}{path}?{urlencode(put_query)}", content=data), 404, "NotFound")
    assert not any(p.is_file() and p.read_bytes() == data for p in gw.data_dir.parent.rglob("*"))
    assert signing_key(gw) == secret


@pytest.mark.parametrize("prefix", ["%2E%2E/", "results/%2E%2E/%2E%2E/", "..%2F", "results/..%2F..%2F"])
def test_a_traversal_spliced_into_a_real_url_is_refused(gw: Gateway, agent: FakeAgent, prefix: str) -> None:
    published = publish_and_complete(gw, agent, b"data")
    secret_hex = (gw.data_dir / "object-signing.key").read_text().strip()
    for target in ("object-signing.key", "shoal.db"):
        url = with_path(published.get_url, f"/api/v1/objects/{prefix}{target}")
        response = httpx.get(url)
        assert response.status_code in (403, 404), response.text
        assert_error(response, response.status_code, "Forbidden" if response.status_code == 403 else "NotFound")
        assert secret_hex.encode() not in response.content

        planted = with_path(published.put["URL"], f"/api/v1/objects/{prefix}planted")
        response = httpx.put(planted, content=b"data", headers=published.put["Headers"])
        assert response.status_code in (403, 404), response.text
    assert not (gw.data_dir / "planted").exists()
    assert object_files(gw, published.claim.job_id) == {published.key, published.key + ".sha256"}
