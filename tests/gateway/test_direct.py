"""gateway/direct.py: the hot paths' statements, run through the DB-API cursor, give what SQLAlchemy gives."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, bindparam, event, select, update

from gateway import claim, direct, history
from gateway import statements as sql
from gateway.history import Topic
from gateway.models import EVENTS, EXECUTIONS, JOBS, ExecutionState
from gateway.store import NodeInfo, RunOutcome, Store
from tests.gateway.test_store import wasm

INFO = NodeInfo(engines=["wasm"], publishers=["s3managed"], storage_sources=["inline"],
                labels={"site": "here"}, capacity={"CPU": 2.0})


def as_sqlalchemy(engine: Engine, statement: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(statement, params)]


def as_direct(engine: Engine, statement: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = direct.run(connection, statement, params)
        assert all(tuple(row) == tuple(row._mapping.values()) for row in rows)
        return [dict(row._mapping) for row in rows]


def test_reads_give_the_rows_sqlalchemy_gives_with_json_booleans_and_expanding_lists(engine: Engine) -> None:
    store = Store(engine, lease_seconds=60, max_attempts=3)
    node, _ = store.register_node(INFO)
    jobs = [store.submit(wasm(count=2)) for _ in range(2)]
    _, _, claimed = store.poll(node.id, [], limit=3, slots=3, info=INFO)
    first = claimed[0].execution
    store.complete(node.id, first.id, RunOutcome(exit_code=0, stdout="out", stdout_truncated=True), False)
    ids = [job.id for job in jobs]
    cases = [
        (sql.NODE, {"node": node.id}),  # JSON columns: labels, engines, capacity
        (sql.JOB_OF, {"execution": first.id}),  # the job with its spec (a subquery)
        (sql.EXECUTION, {"execution": first.id}),  # a boolean column: stdout_truncated
        (sql.RUNNING_HERE, {"running": [c.execution.id for c in claimed], "node": node.id}),
        (sql.DONE_PARTITIONS, {"job": first.job_id, "version": 1}),
        (claim._JOBS, {"ids": ids}),
        (claim._WAITING, {"node": node.id, "engine": "wasm", "size": 10}),
        (claim._USED, {"node": node.id}),
        (claim._HEADS, {"engine": "wasm", "count": 5, "time": 0, "job": "", "partition": -1, "id": ""}),  # a CTE
    ]
    for statement, params in cases:
        expected = as_sqlalchemy(engine, statement, params)
        assert expected, statement  # each case reads something
        assert as_direct(engine, statement, params) == expected, statement
    job = as_direct(engine, sql.JOB_OF, {"execution": first.id})[0]
    assert job["spec"]["Tasks"][0]["Engine"]["Type"] == "wasm"
    execution = as_direct(engine, sql.EXECUTION, {"execution": first.id})[0]
    assert execution["stdout_truncated"] is True and execution["compute_state"] == ExecutionState.COMPLETED


def test_updates_write_through_the_transaction_and_an_empty_list_goes_through_sqlalchemy(engine: Engine) -> None:
    store = Store(engine, lease_seconds=60, max_attempts=3, queue_timeout=3600)  # no node: it waits, queued
    job = store.submit(wasm(count=3))
    rename = update(JOBS).where(JOBS.c.id.in_(bindparam("ids", expanding=True))).values(
        state_message=bindparam("message"))
    with engine.begin() as connection:
        assert direct.run(connection, rename, {"ids": [job.id], "message": "renamed"}) == []
        assert direct.run(connection, rename, {"ids": [], "message": "nothing"}) == []  # SQLAlchemy's empty IN
    with engine.begin() as connection:
        direct.run(connection, rename, {"ids": [job.id], "message": "undone"})
        connection.rollback()
    assert store.find_job("default", job.id).state_message == "renamed"
    partitions = select(EXECUTIONS.c.partition_index).where(EXECUTIONS.c.job_id == bindparam("job")).order_by(
        EXECUTIONS.c.partition_index)
    with engine.connect() as connection:
        assert direct.run(connection, partitions, {"job": job.id}).scalars() == [0, 1, 2]


def test_statement_listeners_see_what_runs_directly(engine: Engine) -> None:
    """Listeners (the tests that count statements) see the statements run directly, with their values; SQLAlchemy's
    own execution would pass its execution context, which a direct run has none of."""
    seen: list[tuple[str, Any, Any]] = []

    def listener(_connection: Any, _cursor: Any, statement: str, parameters: Any, context: Any, _many: bool) -> None:
        seen.append((statement, parameters, context))

    event.listen(engine, "before_cursor_execute", listener)
    with engine.connect() as connection:
        direct.run(connection, claim._JOBS, {"ids": ["j-1", "j-2"]})
        direct.run(connection, claim._USED, {"node": "n-1"})  # a literal IN list of its own (the active states)
    event.remove(engine, "before_cursor_execute", listener)
    assert [("FROM jobs" in statement, context) for statement, _, context in seen] == [(True, None), (False, None)]
    values = seen[0][1].values() if isinstance(seen[0][1], dict) else seen[0][1]
    assert sorted(values) == ["j-1", "j-2"]


def _rows(engine: Engine, table: Any, where: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(select(table).where(where).order_by(
            *table.primary_key.columns))]


def test_inserts_write_what_sqlalchemy_writes_defaults_and_json_included(engine: Engine,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows inserted directly (600 events, in statements of at most 1,000 values) read back as the same rows
    inserted through SQLAlchemy, JSON and the defaults of the columns they leave out included."""
    job = Store(engine, lease_seconds=60, max_attempts=3, queue_timeout=3600).submit(wasm())
    monkeypatch.setattr(direct, "_CACHE", {})  # plans made afresh, for statements of at most 1,000 values
    monkeypatch.setattr(direct, "_MOST_VALUES", {"sqlite": 1_000, "postgresql": 1_000})
    inserts: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda *args: inserts.append(args[2]) if args[2].startswith("INSERT INTO events") else None)

    def events(execution: str) -> list[dict[str, Any]]:
        return [history.event(job.id, 1, execution, Topic.EXECUTION, f"event {i}", "", ExecutionState.RUNNING,
                              {"Index": i, "Nested": {"ü": [i, None]}} if i % 2 else None, 1_000 + i)
                for i in range(600)]

    def execution(execution_id: str) -> dict[str, Any]:  # leaves out the columns the table has defaults for
        return {"id": execution_id, "job_id": job.id, "namespace": "default", "engine": "wasm", "create_time": 5,
                "modify_time": 5}

    with engine.begin() as connection:
        direct.insert(connection, EVENTS, events("e-direct"))
        direct.insert(connection, EXECUTIONS, [execution("e-direct")])
        connection.execute(EVENTS.insert(), events("e-sqlalchemy"))
        connection.execute(EXECUTIONS.insert(), [execution("e-sqlalchemy")])
    assert len(inserts) == 6 + 1  # directly 111 rows of 9 values at a time, then SQLAlchemy's one statement
    by_direct = _rows(engine, EVENTS, EVENTS.c.execution_id == "e-direct")
    by_sqlalchemy = _rows(engine, EVENTS, EVENTS.c.execution_id == "e-sqlalchemy")
    assert len(by_direct) == 600 and by_direct[1]["details"] == {"Index": 1, "Nested": {"ü": [1, None]}}
    assert [row | {"seq": 0, "execution_id": ""} for row in by_direct] == \
        [row | {"seq": 0, "execution_id": ""} for row in by_sqlalchemy]
    [direct_execution] = _rows(engine, EXECUTIONS, EXECUTIONS.c.id == "e-direct")
    [sqlalchemy_execution] = _rows(engine, EXECUTIONS, EXECUTIONS.c.id == "e-sqlalchemy")
    assert direct_execution | {"id": ""} == sqlalchemy_execution | {"id": ""}
    assert direct_execution["compute_state"] == ExecutionState.NEW and direct_execution["stdout"] == ""


def test_an_insert_that_needs_a_computed_default_goes_through_sqlalchemy(engine: Engine) -> None:
    scratch = Table("scratch", MetaData(), Column("id", Integer, primary_key=True),
                    Column("made", String, nullable=False, default=lambda: "computed"))
    scratch.create(engine)
    contexts: list[Any] = []  # SQLAlchemy's execution passes its context to listeners; a direct one has none
    event.listen(engine, "before_cursor_execute", lambda *args: contexts.append(args[4]))
    with engine.begin() as connection:
        direct.insert(connection, scratch, [{"id": 1}, {"id": 2}])
        assert contexts and all(context is not None for context in contexts)
        del contexts[:]
        direct.insert(connection, scratch, [{"id": 3, "made": "given"}])
        assert contexts == [None]
    with engine.connect() as connection:
        assert connection.execute(select(scratch.c.made).order_by(scratch.c.id)).scalars().all() == \
            ["computed", "computed", "given"]
