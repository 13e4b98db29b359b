"""Downloading results: each presigned URL fetched, its digest checked, its archive extracted safely and
merged into `job-<id>/{stdout, stderr, exitCode, <name>/…}` as `bacalhau job get` does."""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import httpx

from shoal.errors import ResultsError

_STREAMS = ("stdout", "stderr", "exitCode")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def download_results(items: list[dict[str, Any]], out_dir: Path, *, raw: bool = False, timeout: float = 300) -> Path:
    """Fetch and lay out every result; with `raw`, each execution's files stay in `raw/<executionID>/`."""
    if not items:
        raise ResultsError("No results found for this job. Try `shoal job describe` or the job's logs.")
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(items, key=lambda item: item["Params"].get("PartitionIndex", 0))
    with tempfile.TemporaryDirectory(prefix="shoal-get-") as scratch, httpx.Client(timeout=timeout) as http:
        for item in ordered:
            params = item["Params"]
            name = str(params.get("ExecutionID") or f"partition-{params.get('PartitionIndex', 0)}")
            if not _SAFE_NAME.match(name):
                raise ResultsError(f"the gateway sent a result with an unusable execution ID: {name!r}")
            archive = Path(scratch) / f"{name}.tar.gz"
            _fetch(http, params["PreSignedURL"], archive, params.get("SHA256"), params.get("Size"))
            unpacked = out_dir / "raw" / name if raw else Path(scratch) / name
            _extract(archive, unpacked)
            if not raw:
                _merge(unpacked, out_dir)
    return out_dir


def _fetch(http: httpx.Client, url: str, path: Path, sha256: str | None, size: int | None) -> None:
    digest = hashlib.sha256()
    try:
        with http.stream("GET", url) as response, open(path, "wb") as handle:
            if response.is_error:
                response.read()
                status, text = response.status_code, response.text[:200]
                raise ResultsError(f"downloading a result failed with HTTP {status}: {text}")
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                handle.write(chunk)
    except httpx.TransportError as exc:
        raise ResultsError(f"downloading a result failed: {exc}") from exc
    if size is not None and path.stat().st_size != size:
        raise ResultsError(f"a result has {path.stat().st_size} bytes, the gateway recorded {size}")
    if sha256 and digest.hexdigest() != sha256:
        raise ResultsError("a result's SHA-256 does not match the one the gateway recorded")


def _extract(archive: Path, destination: Path) -> None:
    """Extract with the `data` filter: no absolute paths, no `..`, no devices, no links leaving the folder."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(destination, filter=_strict_filter)
    except (tarfile.TarError, OSError) as exc:
        raise ResultsError(f"a result archive could not be extracted safely: {exc}") from exc


def _strict_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    # the `data` filter would quietly make absolute names relative; a result never has them, so refuse
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, path)


def _merge(source: Path, out_dir: Path) -> None:
    """Append stdout, stderr and exitCode; move everything else in, refusing to overwrite."""
    for name in _STREAMS:
        part = source / name
        if part.is_file():
            with open(out_dir / name, "ab") as merged, open(part, "rb") as handle:
                shutil.copyfileobj(handle, merged)
    for entry in sorted(source.rglob("*")):
        relative = entry.relative_to(source)
        if relative.parts[0] in _STREAMS or (entry.is_dir() and not entry.is_symlink()):
            continue
        target = out_dir / relative
        if target.exists() or target.is_symlink():
            raise ResultsError(f"cannot merge results as output already exists: {target}. Try --raw")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(entry), target)
    for entry in sorted(source.iterdir()):
        if entry.is_dir() and entry.name not in _STREAMS:
            (out_dir / entry.name).mkdir(exist_ok=True)
