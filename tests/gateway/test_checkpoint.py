"""SQLite's write-ahead log is copied into the database by the gateway's own thread, not by the commits of requests."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from gateway.db import WAL_AUTOCHECKPOINT, Checkpointer, make_engine
from tests.conftest import wait_for

PAGE = 4096


def test_the_write_ahead_log_reaches_the_database_without_a_commit_checkpointing(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE filler (data BLOB)"))
        with engine.begin() as connection:
            pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            assert pages == WAL_AUTOCHECKPOINT  # what every connection is set to
            connection.execute(text("INSERT INTO filler VALUES (zeroblob(:size))"), {"size": 200 * PAGE})
        before = path.stat().st_size
        assert before < 100 * PAGE, "a commit copied the log into the database"
        checkpointer = Checkpointer.start_for(engine)
        assert checkpointer is not None
        try:
            wait_for(lambda: path.stat().st_size >= 200 * PAGE, timeout=10, what="the checkpointer to copy the log")
        finally:
            checkpointer.stop()
    finally:
        engine.dispose()


def test_only_sqlite_files_get_a_checkpointer() -> None:
    engine = make_engine("sqlite://")
    try:
        assert Checkpointer.start_for(engine) is None
    finally:
        engine.dispose()
