"""Where the gateway runs its database calls: on the event loop on SQLite, in worker threads on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from gateway.app import create_app
from gateway.services import Services
from gateway.settings import Settings
from tests.conftest import ON_POSTGRES
from tests.gateway.conftest import database_url


def test_database_calls_run_on_the_event_loop_only_on_sqlite(tmp_path: Path) -> None:
    svc: Services = create_app(Settings(data_dir=tmp_path, database_url=database_url(tmp_path))).state.services
    assert svc.db_on_loop is (not ON_POSTGRES)


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
