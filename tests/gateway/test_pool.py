"""The gateway's PostgreSQL connection pool (gateway/db.py) on a server of the test's own, which it restarts: a
connection the server closed is never handed out, and one in use a moment ago costs no ping."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from gateway import db
from tests.postgres import PostgresServer


@pytest.fixture
def engine(own_postgres: PostgresServer) -> Iterator[Engine]:
    engine = db.new_engine(own_postgres.create_database())
    yield engine
    engine.dispose()


def count_pings(engine: Engine) -> list[Any]:
    pings: list[Any] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    return pings


def one(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT 1")).scalar_one())


def test_a_connection_the_server_closed_is_replaced_before_it_is_handed_out(engine: Engine,
                                                                            own_postgres: PostgresServer) -> None:
    pings = count_pings(engine)
    assert one(engine) == 1
    assert one(engine) == 1  # the same pooled connection again, at once: no round trip to check it
    assert pings == []
    own_postgres.stop("fast")
    own_postgres.start()
    assert one(engine) == 1  # the pooled connection's socket says the server closed it: a new one answers
    assert engine.pool.checkedin() == 1  # the dead one is gone, not returned to the pool


def test_a_connection_idle_past_the_limit_is_pinged(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    pings = count_pings(engine)
    assert one(engine) == 1
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    assert one(engine) == 1
    assert len(pings) == 1
