"""Results in S3 (or any S3-compatible store): boto3 presigns; the gateway checks size and digest."""

from __future__ import annotations

import base64
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from gateway.objectstore import ObjectInfo, PresignedRequest


class S3ObjectStore:
    """One bucket; credentials come the usual boto3 way (environment, profile, instance role)."""

    def __init__(self, *, bucket: str, endpoint_url: str = "", region: str = "") -> None:
        self.bucket = bucket
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def presign_put(self, key: str, size: int, sha256: str, expires_in: int) -> PresignedRequest:
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        params = {"Bucket": self.bucket, "Key": key, "ContentLength": size, "ChecksumSHA256": checksum,
                  "ChecksumAlgorithm": "SHA256"}
        url = self._client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in)
        # signed headers: the store refuses a body of another size or digest, and keeps the digest
        headers = {"Content-Length": str(size), "x-amz-checksum-sha256": checksum,
                   "x-amz-sdk-checksum-algorithm": "SHA256"}
        return PresignedRequest(url, "PUT", headers)

    def presign_get(self, key: str, expires_in: int) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        return str(self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        checksum = head.get("ChecksumSHA256")
        digest = base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None
        return ObjectInfo(int(head["ContentLength"]), digest)
