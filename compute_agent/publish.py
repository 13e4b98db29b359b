"""The managed publisher: the results dir as tar.gz (entries relative to it), uploaded with a presigned PUT.

The results dir is written by the task, so it is read as hostile: nothing in it is ever followed, and the
agent never reads a file the task could not have written itself.

- Directories and regular files are stored; symbolic links are stored as links, their targets never read.
- FIFOs, sockets and device files are left out, with a warning: opening one could block the agent or read a
  device of the host.
- A regular file with a hard link outside the results dir (st_nlink larger than the number of its names
  inside) is left out, with a warning: its content belongs to a file the task was not given. Hard links
  between files inside the results dir are kept, as tar hard links.
- Every folder and file is opened relative to its parent's descriptor with O_NOFOLLOW (and O_NONBLOCK), so a
  name swapped for a link while archiving is never followed; what is opened must still be the regular file
  or folder that was listed (same device and inode), or it is left out with a warning.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from compute_agent.errors import GatewayError, PublishError
from compute_agent.gateway_client import GatewayClient

UPLOAD_ATTEMPTS = 5
COMPRESSION = 1  # gzip's fastest level: results are often already compressed, and level 6 ran at ~30 MB/s on them
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

log = logging.getLogger("shoal.agent.publish")


def archive(results_dir: Path, destination: Path) -> tuple[int, str]:
    """Write the archive; returns its size and SHA-256. Links are stored as links, never followed; only
    directories, regular files and links are stored (see the module's description)."""
    names: collections.Counter[tuple[int, int]] = collections.Counter(
        (details.st_dev, details.st_ino) for _, _, _, details in _walk(results_dir)
        if stat.S_ISREG(details.st_mode) and details.st_nlink > 1
    )
    with open(destination, "wb") as raw, _Hashing(raw) as out, tarfile.open(
            fileobj=cast(BinaryIO, out), mode="w:gz", compresslevel=COMPRESSION) as tar:
        first_names: dict[tuple[int, int], str] = {}  # hard links inside: the name stored first
        for relative, parent, name, details in _walk(results_dir):
            mode = details.st_mode
            if stat.S_ISDIR(mode):
                tar.addfile(_info(relative, details, tarfile.DIRTYPE))
            elif stat.S_ISLNK(mode):
                info = _info(relative, details, tarfile.SYMTYPE)
                info.linkname = os.readlink(name, dir_fd=parent)
                tar.addfile(info)
            elif not stat.S_ISREG(mode):
                log.warning("left out of the results: %s is a %s", relative, _kind(mode))
            elif details.st_nlink > max(1, names[(details.st_dev, details.st_ino)]):
                log.warning("left out of the results: %s has hard links outside the results", relative)
            else:
                _add_file(tar, relative, parent, name, details, first_names)
    return out.size, out.digest.hexdigest()


class _Hashing:
    """A file for writing that hashes and counts what goes through it: the archive's digest without reading it
    back."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def __enter__(self) -> _Hashing:
        return self

    def __exit__(self, *_: object) -> None:
        self.flush()


def _walk(root: Path) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """Every entry under `root`, each folder before what it holds, never following a link:
    (path relative to root, a descriptor of its folder, its name there, its lstat)."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack = [(top, "", iter(sorted(os.listdir(top))))]
    try:
        while stack:
            fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            try:
                details = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            relative = prefix + name
            if not stat.S_ISDIR(details.st_mode):
                yield relative, fd, name, details
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:  # swapped for a link or something else since listed
                log.warning("left out of the results: %s changed while archiving (%s)", relative, exc.strerror)
                continue
            opened = os.fstat(child)
            if (opened.st_dev, opened.st_ino) != (details.st_dev, details.st_ino):
                os.close(child)
                log.warning("left out of the results: %s changed while archiving", relative)
                continue
            yield relative, fd, name, details
            stack.append((child, relative + "/", iter(sorted(os.listdir(child)))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _add_file(tar: tarfile.TarFile, relative: str, parent: int, name: str, details: os.stat_result,
              first_names: dict[tuple[int, int], str]) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
    except OSError as exc:  # ELOOP: it became a link since it was listed
        log.warning("left out of the results: %s changed while archiving (%s)", relative, exc.strerror)
        return
    with open(fd, "rb") as handle:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (details.st_dev, details.st_ino):
            log.warning("left out of the results: %s changed while archiving", relative)
            return
        inode = (opened.st_dev, opened.st_ino)
        if opened.st_nlink > 1 and inode in first_names:
            info = _info(relative, opened, tarfile.LNKTYPE)
            info.linkname = first_names[inode]
            tar.addfile(info)
            return
        first_names[inode] = relative
        info = _info(relative, opened, tarfile.REGTYPE)
        info.size = opened.st_size
        tar.addfile(info, handle)  # a file that shrinks meanwhile is an OSError: the publish fails


def _info(relative: str, details: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(relative)
    info.type = kind
    info.mode = stat.S_IMODE(details.st_mode)
    info.mtime = int(details.st_mtime)
    info.uid, info.gid = details.st_uid, details.st_gid
    return info


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"  # pragma: no cover


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
