"""Scoped CI/CD tokens and node join tokens. Secrets are high-entropy, carry a recognisable prefix
(`shoal_ci_…`, `shoal_join_…`) and are shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Sequence

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from gateway.db import READ_ONLY
from gateway.errors import NotFound
from gateway.models import JoinTokenRecord, TokenRecord
from gateway.store import now_ns

CI_PREFIX = "shoal_ci_"
JOIN_PREFIX = "shoal_join_"
_LAST_USED_EVERY_NS = 60 * 10**9  # record use at most once a minute per token: reads stay reads


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = engine.execution_options(**READ_ONLY)

    # -- CI tokens ----------------------------------------------------------------------------------------

    def create(self, *, name: str, capabilities: Sequence[str], namespace: str, expires_in: float,
               created_by: str) -> tuple[TokenRecord, str]:
        """A new token and its secret (returned here only)."""
        secret = CI_PREFIX + secrets.token_urlsafe(32)
        now = now_ns()
        record = TokenRecord(id=f"tok-{uuid.uuid4().hex[:12]}", name=name, secret_sha256=sha256(secret),
                             prefix=secret[:len(CI_PREFIX) + 4], capabilities=list(capabilities), namespace=namespace,
                             created_by=created_by, create_time=now, expire_time=now + int(expires_in * 1e9))
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add(record)
        return record, secret

    def list(self, created_by: str | None = None) -> list[TokenRecord]:
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            query = select(TokenRecord).order_by(col(TokenRecord.create_time).desc())
            if created_by is not None:
                query = query.where(col(TokenRecord.created_by) == created_by)
            return list(session.exec(query).all())

    def revoke(self, token_id: str, created_by: str | None = None) -> TokenRecord:
        """Revoke a token (only one `created_by` made, unless None); revoking twice is fine."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            record = session.get(TokenRecord, token_id)
            if record is None or (created_by is not None and record.created_by != created_by):
                raise NotFound(f"token not found: {token_id}")
            record.revoke_time = record.revoke_time or now_ns()
            session.add(record)
            return record

    def authenticate(self, secret: str) -> TokenRecord | None:
        """The live token with this secret (not expired or revoked), its last use recorded."""
        if not secret.startswith(CI_PREFIX):
            return None
        digest, now = sha256(secret), now_ns()
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            record = session.exec(select(TokenRecord).where(col(TokenRecord.secret_sha256) == digest)).first()
        if record is None or record.revoke_time is not None or record.expire_time <= now:
            return None
        if record.last_used is None or now - record.last_used > _LAST_USED_EVERY_NS:
            with Session(self.engine) as session, session.begin():
                stored = session.get(TokenRecord, record.id)
                if stored is not None:
                    stored.last_used = now
                    session.add(stored)
            record.last_used = now
        return record

    # -- join tokens ------------------------------------------------------------------------------------

    def create_join_token(self, *, expires_in: float, created_by: str) -> tuple[JoinTokenRecord, str]:
        secret = JOIN_PREFIX + secrets.token_urlsafe(32)
        now = now_ns()
        record = JoinTokenRecord(id=f"jt-{uuid.uuid4().hex[:12]}", secret_sha256=sha256(secret), created_by=created_by,
                                 create_time=now, expire_time=now + int(expires_in * 1e9))
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add(record)
        return record, secret

    def use_join_token(self, secret: str) -> bool:
        """Whether `secret` is a live join token; counts the node it lets in."""
        if not secret.startswith(JOIN_PREFIX):
            return False
        with Session(self.engine) as session, session.begin():
            record = session.exec(select(JoinTokenRecord).where(
                col(JoinTokenRecord.secret_sha256) == sha256(secret))).first()
            if record is None or record.expire_time <= time.time_ns():
                return False
            record.nodes_joined += 1
            session.add(record)
            return True
