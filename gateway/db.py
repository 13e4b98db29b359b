"""The database engine, built in one place and passed in; SQLite gets WAL and immediate transactions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event
from sqlmodel import SQLModel, create_engine

from gateway import models  # noqa: F401  (registers the tables)

READ_ONLY = {"sqlite_begin": "DEFERRED"}


def make_engine(url: str) -> Engine:
    """An engine for `url`, with the tables created."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _tune_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    SQLModel.metadata.create_all(engine)
    return engine


def _tune_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN; take control so each writing transaction takes the
    # write lock up front (BEGIN IMMEDIATE) and concurrent writers wait on busy_timeout instead of failing
    # on a lock upgrade. Reads (an engine with READ_ONLY options) begin DEFERRED and run beside writers.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql(f"BEGIN {connection.get_execution_options().get('sqlite_begin', 'IMMEDIATE')}")
