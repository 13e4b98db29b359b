"""Execution logs: ordered chunks of stdout and stderr, appended by the agent that runs the execution."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, bindparam, func
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from gateway import direct
from gateway.db import READ_ONLY
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.models import ACTIVE_EXECUTION_STATES, LOG_CHUNKS, ExecutionRecord, LogChunkRecord

STREAMS = ("stdout", "stderr")
MAX_CHUNK_CHARS = 64 << 10

_STORED = (  # per stream of an execution: where its stored text ends, and how much of it there is
    core_select(LOG_CHUNKS.c.stream, func.max(LOG_CHUNKS.c.offset + func.length(LOG_CHUNKS.c.data)),
                func.sum(func.length(LOG_CHUNKS.c.data)))
    .where(LOG_CHUNKS.c.execution_id == bindparam("execution"))
    .group_by(LOG_CHUNKS.c.stream)
)


@dataclass(frozen=True)
class Chunk:
    stream: str
    offset: int
    data: str


def storable(text: str) -> str:
    """Text a task wrote, as every database keeps it: NUL (which PostgreSQL's text refuses) becomes U+FFFD,
    one character for one, so log offsets still count the same."""
    return text.replace("\x00", "\ufffd")


def parse_chunks(raw: object, where: str = "Chunks") -> list[Chunk]:
    """`[{Stream, Offset, Data}]` as an agent sends it, offsets counted in characters of each stream."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest(f"{where}: must be a list of log chunks")
    chunks = []
    for index, item in enumerate(raw):
        at = f"{where}[{index}]"
        if not isinstance(item, dict) or item.get("Stream") not in STREAMS:
            raise BadRequest(f"{at}.Stream: must be stdout or stderr")
        offset, data = item.get("Offset"), item.get("Data")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**53:
            raise BadRequest(f"{at}.Offset: must be a whole number below 2^53")
        if not isinstance(data, str) or len(data) > MAX_CHUNK_CHARS:
            raise BadRequest(f"{at}.Data: must be text of at most {MAX_CHUNK_CHARS} characters")
        chunks.append(Chunk(item["Stream"], offset, storable(data)))
    return chunks


class LogStore:
    """Chunks are kept per stream at byte offsets, so a chunk sent twice (a retried request) is stored once."""

    def __init__(self, engine: Engine, *, max_bytes_per_execution: int) -> None:
        self.engine = engine
        self._reader = engine.execution_options(**READ_ONLY)
        self.max_bytes = max_bytes_per_execution

    @contextmanager
    def _tx(self, read_only: bool = False) -> Iterator[Session]:
        with Session(self._reader if read_only else self.engine, expire_on_commit=False) as session, \
                session.begin():
            yield session

    def append(self, node_id: str, execution_id: str, chunks: Sequence[Chunk]) -> tuple[int, bool]:
        """Store the chunks not stored yet, up to the execution's cap; returns the characters kept and whether
        the cap was reached."""
        with self._tx() as session:
            execution = session.get(ExecutionRecord, execution_id)
            if execution is None or execution.node_id != node_id:
                raise NotFound(f"execution {execution_id} is not assigned to this node")
            if execution.compute_state not in ACTIVE_EXECUTION_STATES:
                raise Conflict(f"execution {execution_id} is {execution.compute_state}: no more logs")
            return store_chunks(session, execution_id, chunks, self.max_bytes)

    def read(self, execution_id: str, after: int = 0, limit: int = 1000) -> list[LogChunkRecord]:
        with self._tx(read_only=True) as session:
            return list(session.exec(
                select(LogChunkRecord)
                .where(col(LogChunkRecord.execution_id) == execution_id, col(LogChunkRecord.seq) > after)
                .order_by(col(LogChunkRecord.seq)).limit(limit)
            ).all())


def store_chunks(db: Session | Connection, execution_id: str, chunks: Sequence[Chunk],
                 max_bytes: int) -> tuple[int, bool]:
    """Store the chunks not stored yet, up to `max_bytes` characters for the execution; returns the
    characters kept and whether the cap was reached."""
    kept, capped = 0, False
    stored = direct.run(db, _STORED, {"execution": execution_id})
    ends = {stream: int(end or 0) for stream, end, _ in stored}
    total = sum(int(size or 0) for _, _, size in stored)
    now = time.time_ns()
    rows = []
    for chunk in chunks:
        if chunk.offset + len(chunk.data) <= ends.get(chunk.stream, 0):
            continue  # already stored
        data = chunk.data[: max(0, max_bytes - total)]
        capped = capped or len(data) < len(chunk.data)
        if data:
            rows.append({"execution_id": execution_id, "stream": chunk.stream, "offset": chunk.offset, "data": data,
                         "time": now})
            ends[chunk.stream] = chunk.offset + len(data)
            total += len(data)
            kept += len(data)
    if rows:
        direct.insert(db, LOG_CHUNKS, rows)
    return kept, capped
