"""Input fetchers: `urlDownload` saves `<Target>/<filename>`, `inline` (a data: URL) saves the file at `Target`."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

import httpx

from compute_agent.errors import InputError
from compute_agent.workspace import Mount, TaskRun

ATTEMPTS = 3


async def fetch_all(run: TaskRun, sources: list[dict[str, Any]], http: httpx.AsyncClient, limit: int) -> None:
    """Fetch every input of the task into its workspace and record where each is mounted."""
    for source in sources:
        kind = source["Source"]["Type"]
        params = source["Source"].get("Params") or {}
        target = source["Target"]
        host = run.inputs_dir / target.lstrip("/")
        if kind == "inline":
            _write_inline(host, params["URL"], limit)
        elif kind == "urlDownload":
            await _download(host, params["URL"], http, limit)
        else:
            raise InputError(f"input source type {kind!r} is not supported by this agent")
        run.inputs.append(Mount(host, target, read_only=True))


def _write_inline(path: Path, url: str, limit: int) -> None:
    header, sep, payload = url.partition(",")
    if not header.startswith("data:") or not sep:
        raise InputError(f"inline input for {path.name} is not a data: URL")
    data = base64.b64decode(payload, validate=False) if header.endswith(";base64") else unquote_to_bytes(payload)
    if len(data) > limit:
        raise InputError(f"inline input is {len(data)} bytes, over the {limit}-byte limit")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _filename(response: httpx.Response, url: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r'filename="?([^";]+)"?', disposition)
    name = match.group(1) if match else Path(urlparse(url).path).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "download"


async def _download(folder: Path, url: str, http: httpx.AsyncClient, limit: int) -> None:
    last_error = ""
    for _ in range(ATTEMPTS):
        try:
            async with http.stream("GET", url, follow_redirects=True, timeout=300) as response:
                if response.status_code >= 400:
                    last_error = f"HTTP {response.status_code}"
                    if response.status_code < 500:
                        break
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                received = 0
                with open(folder / _filename(response, url), "wb") as handle:
                    async for chunk in response.aiter_bytes(1 << 20):
                        received += len(chunk)
                        if received > limit:
                            raise InputError(f"{url} is over the {limit}-byte input limit")
                        handle.write(chunk)
                return
        except httpx.TransportError as exc:
            last_error = repr(exc)
    raise InputError(f"could not download {url}: {last_error}")
