"""The audit log: who submitted, stopped, approved, created or revoked what, and when."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from gateway import direct
from gateway.db import READ_ONLY
from gateway.models import AUDIT, AuditRecord
from gateway.store import now_ns


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = engine.execution_options(**READ_ONLY)

    def record(self, actor: str, action: str, target: str, *, namespace: str = "", detail: str = "") -> None:
        with Session(self.engine) as session, session.begin():
            add(session, actor, action, target, namespace=namespace, detail=detail)

    def read(self, *, after: int = 0, limit: int = 100, actor: str = "", action: str = "") -> list[AuditRecord]:
        """Entries after sequence number `after`, oldest first."""
        query = select(AuditRecord).where(col(AuditRecord.seq) > after)
        if actor:
            query = query.where(col(AuditRecord.actor) == actor)
        if action:
            query = query.where(col(AuditRecord.action) == action)
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            return list(session.exec(query.order_by(col(AuditRecord.seq)).limit(limit)).all())


def add(session: Session, actor: str, action: str, target: str, *, namespace: str = "", detail: str = "") -> None:
    """Write an entry in the session's transaction (`AuditLog.record`'s own, or one that writes what it records)."""
    direct.insert(session, AUDIT, [entry(actor, action, target, namespace=namespace, detail=detail)])


def entry(actor: str, action: str, target: str, *, namespace: str = "", detail: str = "") -> dict[str, Any]:
    """An entry's row, for `direct.insert` or `direct.later`."""
    return {"time": now_ns(), "actor": actor, "action": action, "target": target, "namespace": namespace,
            "detail": detail[:1024]}
