"""Object stores behind one interface: presigned PUTs for agents, presigned GETs for users.

`LocalObjectStore` keeps objects in the gateway's data dir and serves them itself (the embedded default);
`S3ObjectStore` uses any S3-compatible service through boto3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.settings import Settings


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    sha256: str | None


@dataclass(frozen=True)
class PresignedRequest:
    """A request anyone may make until it expires: the URL plus the headers that must go with it."""

    url: str
    method: str
    headers: dict[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    def presign_put(self, key: str, size: int, sha256: str, expires_in: int) -> PresignedRequest: ...

    def presign_get(self, key: str, expires_in: int) -> str: ...

    def stat(self, key: str) -> ObjectInfo | None: ...


def make_object_store(settings: Settings) -> ObjectStore:
    if settings.results_bucket:
        from gateway.objectstore.s3 import S3ObjectStore

        return S3ObjectStore(
            bucket=settings.results_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
        )
    from gateway.objectstore.local import LocalObjectStore

    return LocalObjectStore.in_data_dir(settings.data_dir, settings.base_url)
