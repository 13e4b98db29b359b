"""Downloading results: each presigned URL fetched, its digest checked, its archive extracted safely and
merged into `job-<id>/{stdout, stderr, exitCode, <name>/…}` as `bacalhau job get` does.

An archive comes from a task, so it is treated as hostile. It is read as a stream and extracted by hand,
never with `TarFile.extractall`:

- only directories, regular files, symbolic links and hard links are extracted; devices, FIFOs, sparse and
  contiguous files are refused;
- a name that is absolute, empty, holds `..` or NUL, is longer than `MAX_NAME_CHARS` or deeper than
  `MAX_NAME_DEPTH` is refused;
- every folder is opened relative to its parent with O_NOFOLLOW and every file created with
  O_CREAT|O_EXCL|O_NOFOLLOW, so nothing is ever written through a link and no entry replaces another;
- a symbolic link must be relative and stay inside the folder, by its text and, once the archive is out,
  by where it really leads (links through other links); after a merge, links are checked again where they
  landed and any that leads outside `out_dir` is removed;
- a hard link must name a regular file earlier in the same archive; it is extracted as a copy;
- files get the archive's permission bits without setuid, setgid, sticky or write for group and others;
  ownership and directories' modes are not taken from the archive;
- an archive may hold at most `max_members` entries (default `MAX_MEMBERS`) and expand to at most
  `max_bytes` bytes of file content; by default max(`MIN_EXTRACTED_BYTES`, `EXPANSION_RATIO` times its
  compressed size), so a decompression bomb is refused as soon as an entry's declared size passes the limit;
- the download itself stops past the item's `Size` (or `MAX_DOWNLOAD_BYTES` when the gateway sent none),
  and the archive is checked against `SHA256` before a byte of it is extracted;
- a gzip stream that is corrupt, truncated or fails its CRC, and a tar stream with data after its end, are
  refused.

A refused archive is a `ResultsError`. Everything is first extracted in a scratch folder inside `out_dir`
and moved into place only once the archive is accepted, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from shoal.errors import ResultsError

_STREAMS = ("stdout", "stderr", "exitCode")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

MAX_MEMBERS = 100_000  # entries in one archive
EXPANSION_RATIO = 100  # an archive may expand to this many times its compressed size …
MIN_EXTRACTED_BYTES = 1 << 30  # … or to 1 GiB, whichever is more
MAX_DOWNLOAD_BYTES = 64 << 30  # when the gateway did not record a Size
MAX_NAME_CHARS = 4096
MAX_NAME_DEPTH = 256
_MAX_EXTENDED_HEADER = 64 << 10  # a pax or GNU long-name header is read into memory
_MAX_TRAILER = 1 << 20  # zeros after the end of the tar stream (blocking padding)
_COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class _Item:
    name: str
    url: str
    partition: int
    sha256: str | None
    size: int | None


def download_results(items: list[dict[str, Any]], out_dir: Path, *, raw: bool = False, timeout: float = 300,
                     max_bytes: int | None = None, max_members: int = MAX_MEMBERS) -> Path:
    """Fetch and lay out every result; with `raw`, each execution's files stay in `raw/<executionID>/`.

    `max_bytes` caps the file content one archive may expand to (default: the larger of
    `MIN_EXTRACTED_BYTES` and `EXPANSION_RATIO` times its compressed size); `max_members` caps its entries."""
    if not items:
        raise ResultsError("No results found for this job. Try `shoal job describe` or the job's logs.")
    checked = sorted((_check_item(item) for item in items), key=lambda item: item.partition)
    names = [item.name for item in checked]
    if len(set(names)) != len(names):
        raise ResultsError(f"the gateway sent two results for the same execution: {sorted(names)}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"cannot write results to {out_dir}: {exc}") from exc
    placed: list[str] = []  # links moved into out_dir by a merge, relative to it
    with tempfile.TemporaryDirectory(prefix=".shoal-get-", dir=out_dir, ignore_cleanup_errors=True) as scratch, \
            httpx.Client(timeout=timeout) as http:
        try:
            for number, item in enumerate(checked):
                archive = Path(scratch) / f"{number}.tar.gz"
                _fetch(http, item.url, archive, item.sha256, item.size)
                limit = max_bytes if max_bytes is not None else max(
                    MIN_EXTRACTED_BYTES, EXPANSION_RATIO * archive.stat().st_size)
                tree = Path(scratch) / str(number)
                _extract(archive, tree, max_bytes=limit, max_members=max_members)
                archive.unlink()
                try:
                    if raw:
                        _place_raw(tree, out_dir / "raw" / item.name)
                    else:
                        _merge(tree, out_dir, placed)
                except OSError as exc:
                    raise ResultsError(f"cannot write results to {out_dir}: {exc}") from exc
        finally:
            escaping = _remove_escaping_links(out_dir, placed)
    if escaping:
        raise ResultsError(f"results were refused as links in them lead outside {out_dir}: {escaping[:5]}")
    return out_dir


def _check_item(item: Any) -> _Item:
    params = item.get("Params") if isinstance(item, dict) else None
    if not isinstance(params, dict):
        raise ResultsError("the gateway sent a result without Params")
    url = params.get("PreSignedURL")
    if not isinstance(url, str) or not url:
        raise ResultsError("the gateway sent a result without a PreSignedURL")
    partition = params.get("PartitionIndex") or 0
    if not isinstance(partition, int) or isinstance(partition, bool):
        raise ResultsError(f"the gateway sent a result with an unusable PartitionIndex: {partition!r}")
    name = str(params.get("ExecutionID") or f"partition-{partition}")
    if not _SAFE_NAME.fullmatch(name):
        raise ResultsError(f"the gateway sent a result with an unusable execution ID: {name[:200]!r}")
    sha256 = params.get("SHA256") or None
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise ResultsError(f"the gateway sent a result with an unusable SHA256: {str(sha256)[:100]!r}")
    size = params.get("Size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ResultsError(f"the gateway sent a result with an unusable Size: {str(size)[:100]!r}")
    return _Item(name, url, partition, sha256.lower() if sha256 else None, size)


# -- download ----------------------------------------------------------------------------------------------


def _fetch(http: httpx.Client, url: str, path: Path, sha256: str | None, size: int | None) -> None:
    """Download to `path`, stopping past the recorded size; the bytes are the object's, not content-decoded."""
    limit = size if size is not None else MAX_DOWNLOAD_BYTES
    digest = hashlib.sha256()
    received = 0
    try:
        with http.stream("GET", url) as response, open(path, "wb") as handle:
            if response.is_error:
                raise ResultsError(
                    f"downloading a result failed with HTTP {response.status_code}: {_error_text(response)}")
            for chunk in response.iter_raw(_COPY_CHUNK):
                received += len(chunk)
                if received > limit:
                    raise ResultsError(f"a result has at least {received} bytes, the gateway recorded {size}"
                                       if size is not None else f"a result is larger than {limit} bytes")
                digest.update(chunk)
                handle.write(chunk)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ResultsError(f"downloading a result failed: {exc}") from exc
    except OSError as exc:
        raise ResultsError(f"cannot write a downloaded result: {exc}") from exc
    if size is not None and received != size:
        raise ResultsError(f"a result has {received} bytes, the gateway recorded {size}")
    if sha256 and digest.hexdigest() != sha256:
        raise ResultsError("a result's SHA-256 does not match the one the gateway recorded")


def _error_text(response: httpx.Response) -> str:
    """The start of an error body, printable (it goes to a terminal)."""
    body = b""
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= 1024:
            break
    text = body[:200].decode("utf-8", "replace")
    return "".join(char if char.isprintable() else "?" for char in text)


# -- extraction --------------------------------------------------------------------------------------------


class _Refused(Exception):
    """An archive is refused; the message says why."""


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses pax and GNU long-name headers larger than `_MAX_EXTENDED_HEADER` before tarfile reads them."""

    _EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                 tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in self._EXTENDED and self.size > _MAX_EXTENDED_HEADER:
            raise tarfile.ReadError(f"an extended header of {self.size} bytes")
        result: tarfile.TarInfo = tarfile.TarInfo._proc_member(self, tar)  # type: ignore[attr-defined]
        return result


def _extract(archive: Path, destination: Path, *, max_bytes: int, max_members: int) -> None:
    """Extract `archive` into the new folder `destination`, or refuse it (see the module's description)."""
    os.mkdir(destination, 0o700)
    try:
        with gzip.open(archive, "rb") as stream:
            _Extraction(destination, max_bytes, max_members).run(stream)
    except _Refused as exc:
        raise ResultsError(f"a result archive could not be extracted safely: {exc}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, UnicodeError, RecursionError) as exc:
        raise ResultsError(f"a result archive could not be extracted safely: {exc or type(exc).__name__}") from exc


class _Extraction:
    def __init__(self, destination: Path, max_bytes: int, max_members: int) -> None:
        self.destination = destination
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.written = 0
        self.files: set[str] = set()  # regular files extracted so far, for hard links
        self.links: list[str] = []

    def run(self, stream: gzip.GzipFile) -> None:
        root = os.open(self.destination, _DIR_FLAGS)
        try:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar:
                count = 0
                while (member := tar.next()) is not None:
                    tar.members = []  # type: ignore[attr-defined]  # nothing is looked up by name: keep memory flat
                    count += 1
                    if count > self.max_members:
                        raise _Refused(f"it has more than {self.max_members} entries")
                    self._member(tar, root, member)
            self._check_end(stream)
        finally:
            os.close(root)
        self._check_links()

    def _member(self, tar: tarfile.TarFile, root: int, member: tarfile.TarInfo) -> None:
        parts = _parts(member.name)
        shown = _shown(member.name)
        try:
            if member.type == tarfile.DIRTYPE:
                os.close(_open_dir(root, parts))
            elif not parts:
                raise _Refused(f"an entry named {shown} that is not a folder")
            elif member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and member.sparse is None:
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover (a regular member always has a file object)
                    raise _Refused(f"{shown} cannot be read")
                self._write(root, parts, member.size, member.mode, source, shown)
                self.files.add("/".join(parts))
            elif member.type == tarfile.SYMTYPE:
                self._symlink(root, parts, member.linkname, shown)
            elif member.type == tarfile.LNKTYPE:
                self._hardlink(root, parts, member.linkname, shown)
            else:
                raise _Refused(f"{shown} is a {_kind(member)}")
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Refused(f"{shown} would be written through a link or into a file") from exc
            if exc.errno == errno.EEXIST:
                raise _Refused(f"{shown} appears twice or replaces another entry") from exc
            raise _Refused(f"{shown}: {exc.strerror or exc}") from exc

    def _write(self, root: int, parts: list[str], size: int, mode: int, source: IO[bytes], shown: str) -> None:
        if size > self.max_bytes - self.written:
            raise _Refused(f"it expands past {self.max_bytes} bytes ({shown} declares {size})")
        parent = _open_dir(root, parts[:-1])
        try:
            fd = os.open(parts[-1], _NEW_FILE_FLAGS, (mode & 0o755) | 0o600, dir_fd=parent)
        finally:
            os.close(parent)
        with open(fd, "wb") as out:
            copied = 0
            while chunk := source.read(_COPY_CHUNK):
                copied += len(chunk)
                if copied > size:  # pragma: no cover (tarfile reads exactly the declared size)
                    raise _Refused(f"{shown} holds more than it declares")
                out.write(chunk)
        self.written += size

    def _symlink(self, root: int, parts: list[str], target: str, shown: str) -> None:
        if not target or "\0" in target:
            raise _Refused(f"{shown} is a link without a usable target")
        if target.startswith("/"):
            raise _Refused(f"{shown} links to the absolute path {_shown(target)}")
        where = posixpath.normpath(posixpath.join(*parts[:-1], target) if parts[:-1] else target)
        if where == ".." or where.startswith("../"):
            raise _Refused(f"{shown} links outside the folder: {_shown(target)}")
        parent = _open_dir(root, parts[:-1])
        try:
            os.symlink(target, parts[-1], dir_fd=parent)
        finally:
            os.close(parent)
        self.links.append("/".join(parts))

    def _hardlink(self, root: int, parts: list[str], target: str, shown: str) -> None:
        """A copy of a regular file earlier in the archive (a hard link made by us would be no safer)."""
        source_parts = _parts(target) if target else []
        if "/".join(source_parts) not in self.files or not source_parts:
            raise _Refused(f"{shown} is a hard link to {_shown(target)}, which is not a file earlier in the archive")
        parent = _open_dir(root, source_parts[:-1])
        try:
            fd = os.open(source_parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        with open(fd, "rb") as source:
            details = os.fstat(fd)
            self._write(root, parts, details.st_size, details.st_mode, source, shown)
        self.files.add("/".join(parts))

    def _check_end(self, stream: gzip.GzipFile) -> None:
        """The rest of the gzip stream: only the tar's zero padding, then a valid end (CRC and length)."""
        rest = stream.read(_MAX_TRAILER + 1)
        if len(rest) > _MAX_TRAILER or rest.strip(b"\0"):
            raise _Refused("it holds data after the end of the tar stream")
        if stream.read(1):  # pragma: no cover (read above reached the end)
            raise _Refused("it holds data after the end of the tar stream")

    def _check_links(self) -> None:
        top = os.path.realpath(self.destination)
        for link in self.links:
            real = os.path.realpath(self.destination / link)
            if real != top and not real.startswith(top + os.sep):
                raise _Refused(f"{_shown(link)} leads outside the folder through other links")


def _parts(name: str) -> list[str]:
    """The components of an entry's name; `./x` and `x/` are `x`, `.` is no components."""
    shown = _shown(name)
    if not name:
        raise _Refused("an entry has an empty name")
    if "\0" in name:
        raise _Refused(f"{shown} holds NUL")
    if name.startswith("/"):
        raise _Refused(f"{shown} is an absolute path")
    if len(name) > MAX_NAME_CHARS:
        raise _Refused(f"{shown} is longer than {MAX_NAME_CHARS} characters")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"{shown} leaves the folder")
    if len(parts) > MAX_NAME_DEPTH:
        raise _Refused(f"{shown} is nested more than {MAX_NAME_DEPTH} deep")
    return parts


def _shown(name: str) -> str:
    """A name from an archive as it is shown in an error: quoted, escaped, shortened."""
    return repr(name if len(name) <= 120 else name[:120] + "…")


def _kind(member: tarfile.TarInfo) -> str:
    kinds = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO",
             tarfile.CONTTYPE: "contiguous file", tarfile.GNUTYPE_SPARSE: "sparse file"}
    if member.sparse is not None:
        return "sparse file"
    return kinds.get(member.type, f"entry of unsupported type {member.type!r}")


def _open_dir(root: int, parts: list[str] | tuple[str, ...]) -> int:
    """A descriptor of the folder `parts` under `root`, made where missing; never through a link."""
    fd = os.dup(root)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- layout ------------------------------------------------------------------------------------------------


def _place_raw(tree: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        raise ResultsError(f"cannot write raw results as {target} already exists")
    try:
        os.rename(tree, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copytree(tree, target, symlinks=True)


def _merge(source: Path, out_dir: Path, placed: list[str]) -> None:
    """Append stdout, stderr and exitCode; move everything else in, refusing to overwrite or to go through
    a link (a link an earlier execution left in `out_dir` included)."""
    root = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in _STREAMS:
            _append_stream(source / name, name, root)
        for parts, kind in _walk(source):
            if parts[0] in _STREAMS:
                continue
            target = out_dir.joinpath(*parts)
            try:
                parent = _open_dir(root, parts if kind == "dir" else parts[:-1])
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                    raise
                raise ResultsError(
                    f"cannot merge results as {target} or a folder above it is a link or a file. Try --raw") from None
            try:
                if kind != "dir":
                    _move_in(source.joinpath(*parts), parts[-1], parent, target)
            finally:
                os.close(parent)
            if kind == "link":
                placed.append("/".join(parts))
    finally:
        os.close(root)


def _append_stream(part: Path, name: str, root: int) -> None:
    try:
        details = os.lstat(part)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(details.st_mode):
        raise ResultsError(f"a result's {name} is not a regular file")
    fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=root)
    with open(fd, "ab") as merged, open(part, "rb") as handle:
        shutil.copyfileobj(handle, merged, _COPY_CHUNK)


def _move_in(entry: Path, name: str, parent: int, target: Path) -> None:
    try:
        os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    else:
        raise ResultsError(f"cannot merge results as output already exists: {target}. Try --raw")
    try:
        os.rename(entry, name, dst_dir_fd=parent)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if entry.is_symlink():
            os.symlink(os.readlink(entry), name, dir_fd=parent)
        else:
            fd = os.open(name, _NEW_FILE_FLAGS, stat.S_IMODE(os.lstat(entry).st_mode), dir_fd=parent)
            with open(fd, "wb") as out, open(entry, "rb") as handle:
                shutil.copyfileobj(handle, out, _COPY_CHUNK)


def _walk(root: Path) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every entry under `root`, parents first and sorted, as (parts, "dir" | "link" | "file"); links are
    never followed."""
    pending: list[tuple[str, ...]] = [()]
    while pending:
        prefix = pending.pop()
        with os.scandir(root.joinpath(*prefix)) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        below = []
        for entry in entries:
            parts = (*prefix, entry.name)
            if entry.is_symlink():
                yield parts, "link"
            elif entry.is_dir(follow_symlinks=False):
                yield parts, "dir"
                below.append(parts)
            else:
                yield parts, "file"
        pending.extend(reversed(below))


def _remove_escaping_links(out_dir: Path, placed: list[str]) -> list[str]:
    """The links a merge placed that lead outside `out_dir`, removed."""
    top = os.path.realpath(out_dir)
    escaping = []
    for link in placed:
        path = out_dir / link
        real = os.path.realpath(path)
        if real != top and not real.startswith(top + os.sep):
            escaping.append(link)
            with contextlib.suppress(OSError):
                path.unlink()
    return escaping
