"""The managed publisher: the results dir as tar.gz (entries relative to it), uploaded with a presigned PUT."""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
from pathlib import Path

from compute_agent.errors import GatewayError, PublishError
from compute_agent.gateway_client import GatewayClient

UPLOAD_ATTEMPTS = 5


def archive(results_dir: Path, destination: Path) -> tuple[int, str]:
    """Write the archive; returns its size and SHA-256. Links are stored as links, never followed."""
    with tarfile.open(destination, "w:gz", compresslevel=6) as tar:
        for path in sorted(results_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(results_dir)), recursive=False)
    digest = hashlib.sha256()
    with open(destination, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return destination.stat().st_size, digest.hexdigest()


async def publish(gateway: GatewayClient, execution_id: str, results_dir: Path, scratch: Path) -> None:
    """Archive and upload; retried with backoff (1 s, 2 s, 4 s …) on transport errors and 5xx answers."""
    path = scratch / "results.tar.gz"
    try:
        size, sha256 = await asyncio.to_thread(archive, results_dir, path)
    except OSError as exc:
        raise PublishError(f"could not archive the results: {exc}") from exc
    delay = 1.0
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            target = await gateway.publish(execution_id, size, sha256)
            await gateway.upload(target["URL"], target["Method"], target.get("Headers") or {}, path, size)
            return
        except GatewayError as exc:
            retryable = exc.status == 0 or exc.status >= 500 or exc.status == 403
            if attempt == UPLOAD_ATTEMPTS or not retryable:
                raise PublishError(f"could not upload the results: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
