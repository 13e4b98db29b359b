"""Alembic migrations (gateway/migrations, gateway/db.py) on SQLite files and on a throwaway PostgreSQL 15."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, text
from sqlmodel import Session, SQLModel, select

from gateway import db
from gateway.db import (
    MIGRATION_LOCK,
    READ_ONLY,
    alembic_config,
    current_status,
    make_engine,
    new_engine,
    upgrade_schema,
)
from gateway.errors import ConfigurationError
from gateway.models import EventRecord, JobRecord
from tests.conftest import postgres_server, shoal_command, wait_for
from tests.postgres import PostgresServer

MODEL_TABLES = set(SQLModel.metadata.tables)
HEAD = "0005"  # this release's revision


@pytest.fixture(scope="module")
def postgres() -> PostgresServer:
    return postgres_server()


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shoal.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test makes, disposed after it (PostgreSQL cannot drop a database with open connections)."""
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def open_engine(engines: list[Engine], url: str, *, migrate: bool = True) -> Engine:
    engine = make_engine(url) if migrate else new_engine(url)
    engines.append(engine)
    return engine


def tables_and_columns(engine: Engine) -> dict[str, set[str]]:
    inspector = inspect(engine)
    return {table: {column["name"] for column in inspector.get_columns(table)} for table in inspector.get_table_names()}


def model_tables_and_columns() -> dict[str, set[str]]:
    return {name: {column.name for column in table.columns} for name, table in SQLModel.metadata.tables.items()}


def schema_differences(engine: Engine, metadata: sa.MetaData = SQLModel.metadata) -> list[object]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))


def run_shoal(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_DATABASE_URL"} | {"SHOAL_DATA_DIR": str(data_dir)}
    return subprocess.run(shoal_command(*args), capture_output=True, text=True, env=env, timeout=120)


# -- an empty database ----------------------------------------------------------------------------------------

def test_upgrade_from_empty_creates_every_table_the_models_define(url: str, engines: list[Engine]) -> None:
    engine = open_engine(engines, url, migrate=False)
    assert tables_and_columns(engine) == {}

    before, after = upgrade_schema(engine)

    assert (before.state, after.state) == ("empty", "current")
    assert after.current == after.head == (HEAD,)
    assert tables_and_columns(engine) == model_tables_and_columns() | {"alembic_version": {"version_num"}}


def test_the_migrated_schema_matches_the_models(url: str, engines: list[Engine]) -> None:
    engine = open_engine(engines, url)

    assert schema_differences(engine) == []
    # the comparison sees a model change that has no migration
    changed = sa.MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(changed)
    sa.Table("jobs", changed, sa.Column("priority", sa.Integer()), extend_existing=True)
    sa.Index("ix_jobs_type", changed.tables["jobs"].c.type)
    differences = schema_differences(engine, changed)
    assert sorted((d[0], d[-1].name) for d in differences if isinstance(d, tuple)) == [
        ("add_column", "priority"), ("add_index", "ix_jobs_type")], differences


def test_make_engine_upgrades_an_empty_database(url: str, engines: list[Engine]) -> None:
    engine = open_engine(engines, url)

    assert current_status(engine).state == "current"
    assert set(inspect(engine).get_table_names()) == MODEL_TABLES | {"alembic_version"}
    with Session(engine) as session:  # integer keys autoincrement on both databases
        for topic in ("a", "b"):
            session.add(EventRecord(job_id="j", topic=topic, message="m", time=1))
        session.commit()
        assert [event.seq for event in session.exec(select(EventRecord).order_by(EventRecord.seq))] == [1, 2]


def test_a_database_with_only_other_tables_counts_as_empty(url: str, engines: list[Engine]) -> None:
    plain = open_engine(engines, url, migrate=False)
    with plain.begin() as connection:
        connection.execute(text("CREATE TABLE other_app (id INTEGER PRIMARY KEY)"))

    engine = open_engine(engines, url)

    assert current_status(engine).state == "current"
    assert set(inspect(engine).get_table_names()) == MODEL_TABLES | {"alembic_version", "other_app"}


# -- an older schema is refused until `shoal db upgrade` ----------------------------------------------------

def make_unversioned(engine: Engine, how: str) -> None:
    """Shoal's tables without a revision: made by create_all (releases before migrations), or a migrated
    database stamped back to base."""
    if how == "create_all":  # as the models were then: the claim's index, a job's spec in its row too, no index
        SQLModel.metadata.create_all(engine)  # on jobs' states nor on nodes' ages
        with engine.begin() as connection:
            connection.execute(text("DROP INDEX ix_executions_waiting"))
            connection.execute(text("DROP INDEX ix_jobs_state"))
            connection.execute(text("DROP INDEX ix_nodes_age"))
            connection.execute(text("CREATE INDEX ix_executions_claim ON executions (compute_state, create_time)"))
            connection.execute(text("ALTER TABLE jobs ADD COLUMN spec JSON NOT NULL DEFAULT '{}'"))
    else:
        with db.migration_lock(engine) as connection:
            command.upgrade(alembic_config(connection), db.BASELINE)
            command.stamp(alembic_config(connection), "base")
    with engine.begin() as connection:  # a job whose spec is only in its row (the upgrade keeps it in job_versions)
        connection.execute(text(
            "INSERT INTO jobs (id, namespace, name, type, state, state_message, version, revision, count, "
            "queue_timeout, total_timeout, spec, create_time, modify_time) VALUES ('j-1', 'default', 'kept', "
            "'batch', 'Pending', '', 1, 1, 1, 0, 0, '{\"Type\": \"batch\"}', 1, 1)"))


@pytest.mark.parametrize("how", ["create_all", "stamped_base"])
def test_an_unversioned_database_is_refused_until_shoal_db_upgrade(url: str, how: str, tmp_path: Path,
                                                                   engines: list[Engine]) -> None:
    plain = open_engine(engines, url, migrate=False)
    make_unversioned(plain, how)
    assert current_status(plain).state == "unversioned"

    with pytest.raises(ConfigurationError) as refused:
        make_engine(url)
    assert "shoal db upgrade" in refused.value.message
    assert refused.value.hint == "run: shoal db upgrade"
    assert current_status(plain).state == "unversioned"  # refusing changed nothing

    assert run_shoal("db", "current", "--database-url", url, data_dir=tmp_path).stdout.strip() == "none"
    upgraded = run_shoal("db", "upgrade", "--database-url", url, data_dir=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"to {HEAD} (head)" in upgraded.stdout
    assert run_shoal("db", "current", "--database-url", url, data_dir=tmp_path).stdout.strip() == f"{HEAD} (head)"

    engine = open_engine(engines, url)
    assert current_status(engine).state == "current"
    assert schema_differences(engine) == []
    with Session(engine) as session:
        kept = session.get(JobRecord, "j-1")
        assert kept is not None and kept.spec == {"Type": "batch"}  # the data stayed


def test_shoal_db_upgrade_refuses_tables_that_are_not_shoals_first_schema(url: str, tmp_path: Path,
                                                                          engines: list[Engine]) -> None:
    plain = open_engine(engines, url, migrate=False)
    SQLModel.metadata.tables["jobs"].create(plain)

    upgraded = run_shoal("db", "upgrade", "--database-url", url, data_dir=tmp_path)

    assert upgraded.returncode == 1
    assert "missing table audit" in upgraded.stderr
    assert current_status(plain).state == "unversioned"


@pytest.fixture
def second_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The gateway's migrations plus a test-only revision 9000, as if a newer release were installed."""
    scripts = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9000_probe.py").write_text(
        f'import sqlalchemy as sa\nfrom alembic import op\n\nrevision = "9000"\ndown_revision = "{HEAD}"\n'
        "branch_labels = None\ndepends_on = None\n\n\ndef upgrade() -> None:\n"
        '    op.create_table("probe", sa.Column("id", sa.Integer(), primary_key=True))\n')
    caches = (db._scripts, db._heads, db._known_revisions)
    for cache in caches:
        cache.cache_clear()
    monkeypatch.setattr(db, "MIGRATIONS", scripts)
    yield
    monkeypatch.undo()
    for cache in caches:
        cache.cache_clear()


def test_a_database_at_an_older_revision_is_refused_until_upgraded(url: str, engines: list[Engine],
                                                                   second_revision: None) -> None:
    plain = open_engine(engines, url, migrate=False)
    with db.migration_lock(plain) as connection:
        command.upgrade(alembic_config(connection), HEAD)
    assert (current_status(plain).current, current_status(plain).state) == ((HEAD,), "outdated")

    with pytest.raises(ConfigurationError) as refused:
        make_engine(url)
    assert f"is at schema revision {HEAD}; this gateway needs 9000: run: shoal db upgrade" in refused.value.message
    assert "probe" not in inspect(plain).get_table_names()

    before, after = upgrade_schema(plain)

    assert (before.current, after.current, after.state) == ((HEAD,), ("9000",), "current")
    assert "probe" in inspect(plain).get_table_names()
    assert current_status(open_engine(engines, url)).state == "current"


def test_a_database_from_a_newer_release_is_refused(url: str, tmp_path: Path, engines: list[Engine]) -> None:
    plain = open_engine(engines, url)
    with plain.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))

    with pytest.raises(ConfigurationError) as refused:
        make_engine(url)
    assert "0099" in refused.value.message and "newer Shoal" in refused.value.message
    upgraded = run_shoal("db", "upgrade", "--database-url", url, data_dir=tmp_path)
    assert upgraded.returncode == 1 and "newer Shoal" in upgraded.stderr
    assert current_status(plain).current == ("0099",)


# -- the CLI's default database is the gateway's ---------------------------------------------------------

def test_shoal_db_upgrade_defaults_to_the_gateways_sqlite_database(tmp_path: Path, engines: list[Engine]) -> None:
    data_dir = tmp_path / "data"
    assert run_shoal("db", "current", data_dir=data_dir).stdout.strip() == "none"
    assert not data_dir.exists()  # looking does not create a database

    upgraded = run_shoal("db", "upgrade", data_dir=data_dir)
    assert upgraded.returncode == 0, upgraded.stderr
    again = run_shoal("db", "upgrade", "--data-dir", str(tmp_path / "flag"), data_dir=data_dir)
    assert again.returncode == 0, again.stderr

    for folder in (data_dir, tmp_path / "flag"):
        engine = open_engine(engines, f"sqlite:///{folder / 'shoal.db'}", migrate=False)
        assert current_status(engine).state == "current"


# -- SQLite: the tuning survives the migrations ------------------------------------------------------------

def test_sqlite_tuning_still_applies_after_the_migrations(tmp_path: Path, engines: list[Engine]) -> None:
    path = tmp_path / "shoal.db"
    engine = open_engine(engines, f"sqlite:///{path}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000

    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        # a writing transaction holds the write lock from BEGIN on
        with engine.begin(), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        with engine.execution_options(**READ_ONLY).connect() as reader:
            reader.execute(text("SELECT count(*) FROM jobs")).scalar()  # a reader does not
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_sqlite_migrations_run_in_one_begin_immediate_transaction(tmp_path: Path, engines: list[Engine]) -> None:
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        open_engine(engines, f"sqlite:///{tmp_path / 'shoal.db'}")
    finally:
        event.remove(Engine, "before_cursor_execute", record)

    ddl = [i for i, statement in enumerate(statements) if statement.startswith("CREATE")]
    begins = [i for i, statement in enumerate(statements) if statement.startswith("BEGIN")]
    indexes = sum(len(table.indexes) for table in SQLModel.metadata.tables.values())
    # the tables, alembic_version, the indexes, and the first revision's claim index (which the second replaces)
    assert len(ddl) == len(MODEL_TABLES) + 1 + indexes + 1, statements
    assert [statements[i] for i in begins if i < ddl[-1]] == ["BEGIN IMMEDIATE"], statements
    assert begins[0] < ddl[0]


def test_two_starts_on_one_empty_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")  # both starts find the file locked, and contend when it is released
    starts = [start_make_engine(f"sqlite:///{path}") for _ in range(2)]
    try:
        for process in starts:
            assert process.stdout is not None and process.stdout.readline().strip() == "starting"
        holder.execute("COMMIT")
        assert_both_started(starts)
    finally:
        holder.close()
        stop_all(starts)


# -- PostgreSQL: replicas starting together on one empty database ------------------------------------------

def start_make_engine(url: str) -> subprocess.Popen[str]:
    code = ("import sys; from gateway.db import make_engine, current_status; print('starting', flush=True); "
            "print(current_status(make_engine(sys.argv[1])).describe(), flush=True)")
    return subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop_all(starts: list[subprocess.Popen[str]]) -> None:
    for process in starts:
        if process.poll() is None:
            process.kill()
            process.communicate()


def assert_both_started(starts: list[subprocess.Popen[str]]) -> None:
    for process in starts:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert out.splitlines()[-1] == f"{HEAD} (head)"


def test_replicas_starting_together_on_an_empty_postgres_database(postgres: PostgresServer,
                                                                   engines: list[Engine]) -> None:
    url = postgres.create_database()
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(postgres.dsn(database), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        starts = [start_make_engine(url) for _ in range(2)]
        try:
            def both_waiting() -> bool:
                for process in starts:
                    if process.poll() is not None:
                        pytest.fail(f"make_engine ended without waiting for the lock: {process.communicate()}")
                row = holder.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s", (database,)).fetchone()
                return row is not None and row[0] == 2

            wait_for(both_waiting, timeout=60, what="both starts to wait for the migration lock")
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            assert_both_started(starts)
        finally:
            stop_all(starts)

    engine = open_engine(engines, url, migrate=False)
    assert current_status(engine).state == "current"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    assert schema_differences(engine) == []
