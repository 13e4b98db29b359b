"""The embedded object store: files under the data dir, served at `/api/v1/objects/<key>` with URLs that
carry an HMAC over method, key, expiry, size and digest, so a URL is good for one object, one method, a
declared size and a short time, exactly like an S3 presigned URL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlencode

from gateway.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from gateway.objectstore import ObjectInfo, PresignedRequest

OBJECTS_PATH = "/api/v1/objects/"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class LocalObjectStore:
    """Objects under `root`; URLs start with `base_url` so agents and users elsewhere can reach them."""

    def __init__(self, root: Path, base_url: str, secret: bytes) -> None:
        self.root = root
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def in_data_dir(cls, data_dir: Path, base_url: str) -> LocalObjectStore:
        """The store under `data_dir/objects`, with a signing key kept beside it across restarts."""
        key_file = data_dir / "object-signing.key"
        if not key_file.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return cls(data_dir / "objects", base_url, bytes.fromhex(key_file.read_text().strip()))

    # -- signing ----------------------------------------------------------------------------------------

    def _signature(self, method: str, key: str, expires: int, size: str, sha256: str) -> str:
        message = "\n".join((method, key, str(expires), size, sha256)).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _url(self, method: str, key: str, expires_in: int, size: str = "", sha256: str = "") -> str:
        _check_key(key)
        expires = int(time.time()) + expires_in
        query = {"method": method, "expires": str(expires)}
        if size:
            query |= {"size": size, "sha256": sha256}
        query["signature"] = self._signature(method, key, expires, size, sha256)
        return f"{self.base_url}{OBJECTS_PATH}{quote(key)}?{urlencode(query)}"

    def presign_put(self, key: str, size: int, sha256: str, expires_in: int) -> PresignedRequest:
        url = self._url("PUT", key, expires_in, str(size), sha256)
        return PresignedRequest(url, "PUT", {"Content-Length": str(size)})

    def presign_get(self, key: str, expires_in: int) -> str:
        return self._url("GET", key, expires_in)

    def verify(self, method: str, key: str, query: dict[str, str]) -> None:
        """Refuse a request whose signature does not cover this method and key, or that has expired."""
        _check_key(key)
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            raise Forbidden("the object URL is not signed") from None
        expected = self._signature(method, key, expires, query.get("size", ""), query.get("sha256", ""))
        if query.get("method") != method or not hmac.compare_digest(expected, query.get("signature", "")):
            raise Forbidden("the object URL signature does not match this request")
        if expires < time.time():
            raise Forbidden("the object URL has expired")

    # -- storage ----------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        digest = path.with_name(path.name + ".sha256")
        return ObjectInfo(path.stat().st_size, digest.read_text() if digest.exists() else None)

    def open(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key}")
        return path

    async def write(self, key: str, body: AsyncIterator[bytes], size: int, sha256: str) -> None:
        """Store a body that must be exactly `size` bytes with digest `sha256`; nothing is kept otherwise."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        received = 0
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                async for chunk in body:
                    received += len(chunk)
                    if received > size:
                        raise PayloadTooLarge(f"the upload is larger than the signed size of {size} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
            if received != size:
                raise BadRequest(f"the upload has {received} bytes, the URL was signed for {size}")
            if not hmac.compare_digest(digest.hexdigest(), sha256):
                raise BadRequest("the upload's SHA-256 does not match the signed digest")
            os.replace(tmp, path)
            path.with_name(path.name + ".sha256").write_text(sha256)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _check_key(key: str) -> None:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise NotFound(f"no object {key}")
