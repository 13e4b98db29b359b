"""Input fetchers. Each input is shown to the task at its Target:

- `inline` (a data: URL) and `managed` (an upload, fetched through the presigned GET the gateway adds to the
  assignment as `URL`) are one file, saved at `Target`; a small managed input is kept in memory by its SHA-256
  (`InputCache`), so that jobs that use it again do not download it again;
- `urlDownload` saves `<Target>/<filename>`;
- `s3` lists `Key` (a key, or a prefix when it ends in `/` or `*`), keeps keys matching `Filter` and this
  partition's share, and saves each object under `Target` by its path after the key's last `/`, with the
  agent's own AWS credentials;
- `local` mounts a host path in place, only under the agent's allow-listed paths, read-write only when both
  the spec and the allow-list say so.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

import httpx

from compute_agent import partitioning
from compute_agent.errors import InputError
from compute_agent.workspace import Mount, TaskRun

ATTEMPTS = 3
CACHE_BYTES = 32 << 20  # managed inputs kept in memory, in all
CACHE_ITEM_BYTES = 8 << 20  # and each at most
STORAGE_SOURCES = ("inline", "urlDownload", "managed", "s3")  # and `local` where paths are allow-listed


@dataclass(frozen=True)
class AllowedPath:
    """A host folder `local` inputs may use; `writable` lets a spec ask for ReadWrite."""

    path: Path
    writable: bool = False

    @classmethod
    def parse(cls, text: str) -> AllowedPath:
        """`/data` or `/data:rw` (Bacalhau's AllowListedLocalPaths form)."""
        path, sep, mode = text.rpartition(":")
        if not sep or mode not in ("rw", "ro"):
            path, mode = text, "ro"
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: an allowed local path must be absolute")
        return cls(Path(os.path.realpath(path)), mode == "rw")


class InputCache:
    """Managed inputs by their SHA-256 (which the gateway recorded when they were uploaded, and each download is
    checked against), the most recently used last, up to `max_bytes` in all and `item_bytes` each."""

    def __init__(self, max_bytes: int = CACHE_BYTES, item_bytes: int = CACHE_ITEM_BYTES) -> None:
        self.max_bytes, self.item_bytes = max_bytes, item_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, sha256: str) -> bytes | None:
        data = self._items.get(sha256)
        if data is not None:
            self._items.move_to_end(sha256)
        return data

    def wants(self, sha256: str, size: int | None) -> bool:
        return bool(sha256) and size is not None and size <= self.item_bytes and sha256 not in self._items

    def put(self, sha256: str, data: bytes) -> None:
        if not self.wants(sha256, len(data)):
            return
        self._items[sha256] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            self._bytes -= len(self._items.popitem(last=False)[1])


class InputFetcher:
    """Fetches a task's inputs into its workspace and records where each is mounted."""

    def __init__(self, http: httpx.AsyncClient, *, limit: int, allowed: Sequence[AllowedPath] = (),
                 cache: InputCache | None = None) -> None:
        self.http = http
        self.limit = limit
        self.allowed = tuple(allowed)
        self.cache = cache or InputCache()

    @property
    def storage_sources(self) -> list[str]:
        return [*STORAGE_SOURCES, "local"] if self.allowed else list(STORAGE_SOURCES)

    async def fetch_all(self, run: TaskRun, sources: list[dict[str, Any]], *, partition: int = 0,
                        partitions: int = 1, in_memory: str | None = None) -> None:
        """Fetch every input; an inline one whose target is `in_memory` goes to `run.in_memory`, not to a file."""
        for source in sources:
            kind = source["Source"]["Type"]
            params = source["Source"].get("Params") or {}
            target = source["Target"]
            host = run.inputs_dir / target.lstrip("/")
            if kind == "inline":
                data = _inline(params["URL"], self.limit, target)
                if target == in_memory:
                    run.in_memory[target] = data
                    continue
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_bytes(data)
            elif kind == "urlDownload":
                await self._download(host, params["URL"], into_folder=True)
            elif kind == "managed":
                if await self._managed(run, host, target, params, in_memory):
                    continue
            elif kind == "s3":
                await asyncio.to_thread(self._fetch_s3, host, params, partition, partitions)
            elif kind == "local":
                path, writable = self._local(params)
                run.inputs.append(Mount(path, target, read_only=not writable))
                continue
            else:
                raise InputError(f"input source type {kind!r} is not supported by this agent")
            run.inputs.append(Mount(host, target, read_only=True))

    async def _managed(self, run: TaskRun, host: Path, target: str, params: dict[str, Any],
                       in_memory: str | None) -> bool:
        """Fetch a managed input from the cache or through its URL; True when it went to `run.in_memory`."""
        sha256, size = str(params.get("SHA256") or ""), params.get("Size")
        data = self.cache.get(sha256)  # nothing is kept without a digest
        if data is not None and target == in_memory:
            run.in_memory[target] = data
            return True
        host.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            host.write_bytes(data)
            return False
        await self._download(host, params["URL"], into_folder=False, size=size, sha256=sha256)
        if self.cache.wants(sha256, size):
            self.cache.put(sha256, host.read_bytes())
        return False

    def _local(self, params: dict[str, Any]) -> tuple[Path, bool]:
        asked = str(params["SourcePath"])
        path = Path(os.path.realpath(asked))
        for allowed in self.allowed:
            if path == allowed.path or allowed.path in path.parents:
                if params.get("ReadWrite") and not allowed.writable:
                    raise InputError(f"local input {asked} may only be mounted read-only on this agent "
                                     f"({allowed.path} is allow-listed without :rw)")
                if not path.exists():
                    raise InputError(f"local input {asked} does not exist on this agent")
                return path, bool(params.get("ReadWrite"))
        raise InputError(f"local input {asked} is not under this agent's allow-listed paths "
                         f"({', '.join(str(a.path) for a in self.allowed) or 'none'}; see --allow-local-path)")

    async def _download(self, path: Path, url: str, *, into_folder: bool, size: int | None = None,
                        sha256: str | None = None) -> None:
        """GET `url` with retries into `path/<filename>` (a folder) or `path` (a file), checked against the
        limit and, when given, the expected size and SHA-256."""
        shown = url.split("?")[0]
        last_error = ""
        for _ in range(ATTEMPTS):
            try:
                async with self.http.stream("GET", url, follow_redirects=True, timeout=300) as response:
                    if response.status_code >= 400:
                        last_error = f"HTTP {response.status_code}"
                        if response.status_code < 500:
                            break
                        continue
                    destination = path / _filename(response, url) if into_folder else path
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    digest, received = hashlib.sha256(), 0
                    with open(destination, "wb") as handle:
                        async for chunk in response.aiter_bytes(1 << 20):
                            received += len(chunk)
                            if received > self.limit:
                                raise InputError(f"{shown} is over the {self.limit}-byte input limit")
                            digest.update(chunk)
                            handle.write(chunk)
                    if size is not None and received != size:
                        raise InputError(f"{shown}: received {received} bytes, expected {size}")
                    if sha256 and digest.hexdigest() != sha256:
                        raise InputError(f"{shown}: the content does not match its SHA-256")
                    return
            except httpx.TransportError as exc:
                last_error = repr(exc)
        raise InputError(f"could not download {shown}: {last_error}")

    def _fetch_s3(self, folder: Path, params: dict[str, Any], partition: int, partitions: int) -> None:
        import boto3
        import botocore.exceptions

        bucket, key = params["Bucket"], params.get("Key") or ""
        where = f"s3://{bucket}/{key}"
        client = boto3.client("s3", endpoint_url=params.get("Endpoint") or None,
                              region_name=params.get("Region") or None)
        try:
            objects = _s3_objects(client, bucket, key, params)
            keys = partitioning.select(objects, count=partitions, index=partition, prefix=key,
                                       partition=params.get("Partition") or {})
            base = key.removesuffix("*").rpartition("/")[0]
            folder.mkdir(parents=True, exist_ok=True)
            total = sum(objects[k] for k in keys)
            if total > self.limit:
                raise InputError(f"{where} holds {total} bytes for this partition, over the {self.limit}-byte limit")
            for name in keys:
                relative = name[len(base):].lstrip("/") if base else name
                destination = folder / relative
                if ".." in Path(relative).parts or not relative:
                    raise InputError(f"{where}: object key {name!r} cannot be laid out as a file")
                destination.parent.mkdir(parents=True, exist_ok=True)
                extra = {"VersionId": params["VersionID"]} if params.get("VersionID") and name == key else None
                client.download_file(bucket, name, str(destination), ExtraArgs=extra)
        except botocore.exceptions.BotoCoreError as exc:
            raise InputError(f"could not read {where}: {exc}") from exc
        except botocore.exceptions.ClientError as exc:
            raise InputError(f"could not read {where}: {exc.response.get('Error', {}).get('Message', exc)}") from exc


def _s3_objects(client: Any, bucket: str, key: str, params: dict[str, Any]) -> dict[str, int]:
    """Object keys and sizes: the key itself, or everything under a prefix (`…/`, `…*` or empty)."""
    if key and not key.endswith(("/", "*")):
        extra = {"VersionId": params["VersionID"]} if params.get("VersionID") else {}
        head = client.head_object(Bucket=bucket, Key=key, **extra)
        return {key: int(head["ContentLength"])}
    found: dict[str, int] = {}
    pattern = re.compile(params["Filter"]) if params.get("Filter") else None
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.removesuffix("*")):
        for item in page.get("Contents", []):
            name = item["Key"]
            if not name.endswith("/") and (pattern is None or pattern.search(name)):
                found[name] = int(item["Size"])
    if not found:
        raise InputError(f"s3://{bucket}/{key} matches no objects")
    return found


def _inline(url: str, limit: int, target: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not header.startswith("data:") or not sep:
        raise InputError(f"inline input for {target} is not a data: URL")
    data = base64.b64decode(payload, validate=False) if header.endswith(";base64") else unquote_to_bytes(payload)
    if len(data) > limit:
        raise InputError(f"inline input is {len(data)} bytes, over the {limit}-byte limit")
    return data


def _filename(response: httpx.Response, url: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r'filename="?([^";]+)"?', disposition)
    name = match.group(1) if match else Path(urlparse(url).path).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "download"
