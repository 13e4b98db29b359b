"""Where the gateway runs its database calls: on the event loop when the database is on this machine (SQLite, or
PostgreSQL over a Unix socket or loopback), in worker threads for a PostgreSQL server elsewhere, or as
`database_calls` says."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import make_url

from gateway.app import create_app
from gateway.errors import ConfigurationError
from gateway.services import Services, database_on_loop
from gateway.settings import Settings
from tests.gateway.conftest import database_url


def test_the_suites_database_is_on_this_machine_so_its_calls_run_on_the_event_loop(tmp_path: Path) -> None:
    svc: Services = create_app(Settings(data_dir=tmp_path, database_url=database_url(tmp_path))).state.services
    assert svc.db_on_loop


@pytest.mark.parametrize(("url", "on_loop"), [
    ("sqlite:////var/lib/shoal/shoal.db", True),
    ("sqlite://", True),
    ("postgresql+psycopg://shoal:secret@127.0.0.1:5432/shoal", True),
    ("postgresql+psycopg://shoal@localhost/shoal", True),
    ("postgresql+psycopg://shoal@[::1]:5433/shoal", True),
    ("postgresql+psycopg:///shoal", True),  # libpq's default Unix socket
    ("postgresql+psycopg://shoal@/shoal?host=/var/run/postgresql", True),
    ("postgresql+psycopg://shoal:secret@db.internal:5432/shoal", False),
    ("postgresql+psycopg://shoal@10.0.3.7/shoal", False),
    ("postgresql+psycopg://shoal@/shoal?host=db.internal", False),
])
def test_auto_runs_transactions_on_the_loop_only_for_a_database_on_this_machine(url: str, on_loop: bool) -> None:
    assert database_on_loop("auto", make_url(url)) is on_loop
    assert database_on_loop("loop", make_url(url)) is True
    assert database_on_loop("threads", make_url(url)) is False


def test_database_calls_is_read_from_the_environment_and_checked(tmp_path: Path) -> None:
    assert Settings.from_env({"SHOAL_DATA_DIR": str(tmp_path)}).database_calls == "auto"
    assert Settings.from_env({"SHOAL_DATABASE_CALLS": "threads", "SHOAL_DATA_DIR": str(tmp_path)}).database_calls \
        == "threads"
    with pytest.raises(ConfigurationError, match="database_calls must be one of auto, loop, threads, not 'thread'"):
        Settings.from_env({"SHOAL_DATABASE_CALLS": "thread", "SHOAL_DATA_DIR": str(tmp_path)})
    svc: Services = create_app(Settings(data_dir=tmp_path, database_calls="threads")).state.services
    assert not svc.db_on_loop


def test_a_database_call_runs_where_the_services_say(tmp_path: Path) -> None:
    svc: Services = create_app(Settings(data_dir=tmp_path)).state.services

    def where(label: str, *, times: int) -> tuple[str, int]:
        return label * times, threading.get_ident()

    async def call() -> tuple[tuple[str, int], int]:
        return await svc.db(where, "ab", times=2), threading.get_ident()

    for on_loop in (True, False):
        svc.db_on_loop = on_loop
        (result, ran_in), loop_thread = asyncio.run(call())
        assert result == "abab", "arguments, positional and by name, reach the call"
        assert (ran_in == loop_thread) is on_loop
