"""Results in S3 (gateway/objectstore/s3.py) against moto's S3 server over real HTTP: the store on its own,
and a real gateway process that presigns against it.

moto checks neither presigned signatures nor expiry, nor the x-amz-checksum-sha256 of a plain upload, so
nothing here relies on S3 refusing a request; the gateway's own size and digest check after upload is tested.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.objectstore.s3 import S3ObjectStore
from tests.conftest import S3, Gateway
from tests.fakes import FakeAgent, result_archive, sha256

pytestmark = pytest.mark.usefixtures("aws_env")


# -- S3ObjectStore on its own --------------------------------------------------------------------------------


@pytest.fixture
def store(s3: S3) -> S3ObjectStore:
    return S3ObjectStore(bucket=s3.bucket, endpoint_url=s3.endpoint, region="us-east-1")


def test_a_presigned_put_uploads_and_a_presigned_get_downloads_the_same_bytes(s3: S3, store: S3ObjectStore) -> None:
    data = os.urandom(200_000)
    key = f"results/j-{uuid.uuid4()}/e-1.tar.gz"
    put = store.presign_put(key, len(data), sha256(data), 300)

    assert put.method == "PUT"
    assert put.url.startswith(f"{s3.endpoint}/{s3.bucket}/{key}?")
    assert put.headers == {
        "Content-Length": str(len(data)),
        "x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
        "x-amz-sdk-checksum-algorithm": "SHA256",
    }
    # Size and digest are signed headers: real S3 refuses an upload whose headers differ from them.
    signed_headers = httpx.URL(put.url).params["X-Amz-SignedHeaders"].split(";")
    assert {"content-length", "x-amz-checksum-sha256"} <= set(signed_headers)

    response = httpx.put(put.url, content=data, headers=put.headers)
    assert response.status_code == 200, response.text
    assert s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == data

    info = store.stat(key)
    assert info is not None
    assert info.size == len(data)
    assert info.sha256 == sha256(data)

    url = store.presign_get(key, 300)
    assert url.startswith(f"{s3.endpoint}/{s3.bucket}/{key}?")
    assert "X-Amz-Signature=" in url
    download = httpx.get(url)
    assert download.status_code == 200
    assert download.content == data


def test_stat_reads_the_sha256_checksum_as_hex(s3: S3, store: S3ObjectStore) -> None:
    data = b"an object with a SHA-256 checksum"
    key = f"results/j-{uuid.uuid4()}/e-1.tar.gz"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")

    info = store.stat(key)
    assert info is not None
    assert (info.size, info.sha256) == (len(data), sha256(data))


def test_stat_of_a_missing_key_is_none(store: S3ObjectStore) -> None:
    assert store.stat(f"results/j-{uuid.uuid4()}/missing.tar.gz") is None


# -- a gateway process keeping results in S3 ---------------------------------------------------------------


@pytest.fixture
def s3_gateway(s3: S3, start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway(results_bucket=s3.bucket, s3_endpoint_url=s3.endpoint, s3_region="us-east-1",
                         results_prefix="shoal/results", lease_seconds="30")


def test_a_gateway_publishes_to_s3_and_hands_out_urls_that_download_the_bytes(
    s3: S3, s3_gateway: Gateway, tmp_path: Path,
) -> None:
    agent = FakeAgent(s3_gateway)
    job_id, execution_id = agent.claim()
    data = result_archive(b"hello from s3\n")
    target = agent.publish(execution_id, len(data), sha256(data))

    key = f"shoal/results/{job_id}/{execution_id}.tar.gz"
    assert target["Key"] == key
    assert target["URL"].startswith(f"{s3.endpoint}/{s3.bucket}/{key}?")
    assert "X-Amz-Signature=" in target["URL"]
    assert target["Headers"]["Content-Length"] == str(len(data))
    assert base64.b64decode(target["Headers"]["x-amz-checksum-sha256"]) == hashlib.sha256(data).digest()

    uploaded = httpx.put(target["URL"], content=data, headers=target["Headers"])
    assert uploaded.status_code == 200, uploaded.text
    assert s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == data

    completed = agent.complete(execution_id)
    assert completed.status_code == 200, completed.text
    assert s3_gateway.job(job_id)["State"]["StateType"] == "Completed"
    [execution] = s3_gateway.executions(job_id)
    assert execution["PublishedResult"] == {"Type": "s3managed",
                                            "Params": {"JobID": job_id, "ExecutionID": execution_id}}

    [item] = s3_gateway.http.get(f"/api/v1/orchestrator/jobs/{job_id}/results").json()["Items"]
    params = item["Params"]
    assert (params["ExecutionID"], params["Size"], params["SHA256"]) == (execution_id, len(data), sha256(data))
    assert params["PreSignedURL"].startswith(f"{s3.endpoint}/{s3.bucket}/{key}?")
    assert "X-Amz-Signature=" in params["PreSignedURL"]
    download = httpx.get(params["PreSignedURL"])
    assert download.status_code == 200
    assert download.content == data

    out = s3_gateway.download(job_id, tmp_path / "out")
    assert (out / "stdout").read_bytes() == b"hello from s3\n"


def test_completion_without_the_object_in_s3_is_refused_and_rescheduled(s3: S3, s3_gateway: Gateway) -> None:
    agent = FakeAgent(s3_gateway)
    job_id, execution_id = agent.claim()
    data = b"never uploaded"
    target = agent.publish(execution_id, len(data), sha256(data))

    completed = agent.complete(execution_id)
    assert completed.status_code == 409, completed.text
    assert completed.json()["Message"] == f"publish failed: no object at {target['Key']}"
    first, retry = s3_gateway.executions(job_id)
    assert first["ComputeState"]["StateType"] == "Failed"
    assert (retry["Attempt"], retry["ComputeState"]["StateType"]) == (2, "New")
    assert s3_gateway.http.get(f"/api/v1/orchestrator/jobs/{job_id}/results").json()["Items"] == []


def test_an_object_of_another_size_in_s3_fails_completion(s3: S3, s3_gateway: Gateway) -> None:
    """moto does not hold an upload to its signed Content-Length; the gateway's size check still does."""
    agent = FakeAgent(s3_gateway)
    job_id, execution_id = agent.claim()
    declared = b"the declared result"
    target = agent.publish(execution_id, len(declared), sha256(declared))
    body = declared + b" and then some"
    uploaded = httpx.put(target["URL"], content=body,
                         headers={"x-amz-checksum-sha256": target["Headers"]["x-amz-checksum-sha256"]})
    assert uploaded.status_code == 200, uploaded.text  # accepted by moto; real S3 would refuse it

    completed = agent.complete(execution_id)
    assert completed.status_code == 409, completed.text
    assert completed.json()["Message"] == (
        f"publish failed: the object has {len(body)} bytes, {len(declared)} were declared"
    )
    assert s3_gateway.executions(job_id)[0]["ComputeState"]["StateType"] == "Failed"


def test_an_s3_gateway_does_not_serve_its_own_object_store(s3_gateway: Gateway) -> None:
    response = s3_gateway.http.get("/api/v1/objects/results/x.tar.gz?method=GET&expires=9999999999&signature=x")
    assert response.status_code == 404
    body = response.json()
    assert body["Code"] == "NotFound"
    assert "S3" in body["Message"]
    assert not (s3_gateway.data_dir / "object-signing.key").exists()
