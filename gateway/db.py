"""The database engine, built in one place and passed in; SQLite gets WAL and immediate transactions.

The schema is Alembic's (`gateway/migrations`). `make_engine` upgrades an empty database at start and refuses
one at an older revision; `shoal db upgrade` (`upgrade_schema`) brings that to head. Both hold the migration
lock while they look and change: a PostgreSQL advisory lock, or on SQLite the write lock of BEGIN IMMEDIATE,
so replicas starting together on one empty database create the schema once and the others find it done.
"""

from __future__ import annotations

import functools
import logging
import select
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.exc import DisconnectionError
from sqlmodel import SQLModel, create_engine

from gateway import models  # noqa: F401  (registers the tables)
from gateway.errors import ConfigurationError
from gateway.responses import dumps

READ_ONLY = {"sqlite_begin": "DEFERRED"}
MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
BASELINE = "0001"  # the schema `create_all` made before there were migrations
MIGRATION_LOCK = 0x5348_4F41_4C5F_4442  # the PostgreSQL advisory lock's key: "SHOAL_DB"
UPGRADE_HINT = "run: shoal db upgrade"
# SQLite: pages in the write-ahead log after which a commit copies it into the database itself (which can take tens
# of milliseconds); a gateway's Checkpointer does it every CHECKPOINT_SECONDS from a thread of its own instead
WAL_AUTOCHECKPOINT = 10_000
CHECKPOINT_SECONDS = 1.0
# PostgreSQL: a pooled connection unused this long is pinged (a round trip) before it is handed out again
PING_AFTER_IDLE_S = 10.0

log = logging.getLogger("shoal.gateway.db")


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands. `state` is one of:

    empty        no Shoal tables and no revision: upgraded at start
    current      at this gateway's head revision
    outdated     at an older revision of this gateway's migrations
    unversioned  Shoal's tables without a revision (made by `create_all`, before migrations)
    unknown      at a revision this gateway does not know (a newer Shoal upgraded it)
    """

    current: tuple[str, ...]
    head: tuple[str, ...]
    state: str

    def describe(self) -> str:
        revision = ", ".join(self.current) or "none"
        return f"{revision} (head)" if self.state == "current" else revision


def make_engine(url: str) -> Engine:
    """An engine for `url` whose schema is at head: an empty database is upgraded, an older one refused."""
    engine = new_engine(url)
    try:
        with migration_lock(engine) as connection:
            status = schema_status(connection)
            if status.state == "empty":
                _upgrade(connection, "head")
            elif status.state != "current":
                raise _refusal(engine, status)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _json_text(value: Any) -> str:
    return dumps(value).decode()


# JSON columns (a job's spec: tens of KB with inline inputs) written and read through orjson
_JSON: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


def new_engine(url: str) -> Engine:
    """An engine for `url`, tuned, with the schema as it is."""
    if url.startswith("sqlite"):
        # A file database gets as many connections as the threads that use them (Starlette's pool has 40): past
        # the pool's size, every transaction would open a connection (and set it up) and close it again.
        pooled = {"pool_size": 48, "max_overflow": 16} if url.split("://", 1)[1].strip("/") not in ("", ":memory:") \
            else {}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pooled, **_JSON)
        _tune_sqlite(engine)
    else:
        engine = create_engine(url, pool_size=10, max_overflow=20, **_JSON)
        _check_on_checkout(engine)
    return engine


def _check_on_checkout(engine: Engine) -> None:
    """Hand out only live PostgreSQL connections, without a round trip for one in use a moment ago.

    A pooled connection the server has closed (a restart, an administrator's kill) has something to read on its
    socket, the server's goodbye or the end of the stream, while a live idle one has nothing: looking costs a
    system call. One idle for PING_AFTER_IDLE_S or more is also pinged, for a peer that vanished without a word (a
    firewall or NAT that forgets idle connections). A dead one is replaced by the pool (DisconnectionError)."""
    returned = "shoal_returned"

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[returned] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(returned)
        if since is None:
            return  # connected just now
        try:
            poller = select.poll()
            poller.register(dbapi_connection.fileno(), select.POLLIN)
            alive = not poller.poll(0)
            if alive and time.monotonic() - since >= PING_AFTER_IDLE_S:
                engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection found dead: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection closed by the server")


class Checkpointer:
    """Copies a SQLite database's write-ahead log into it every CHECKPOINT_SECONDS (a PASSIVE checkpoint, which
    waits on no reader or writer), so that no request's commit has to."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sqlite-checkpoint")

    @classmethod
    def start_for(cls, engine: Engine) -> Checkpointer | None:
        """A running Checkpointer for a SQLite file database; None for any other."""
        if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
            return None
        checkpointer = cls(engine)
        checkpointer._thread.start()
        return checkpointer

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_SECONDS):
            try:
                connection = self.engine.raw_connection()  # in autocommit mode (see _tune_sqlite): no BEGIN
                try:
                    connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()
                finally:
                    connection.close()
            except Exception as exc:  # the next one tries again; meanwhile commits checkpoint as they need
                log.warning("could not checkpoint the database's write-ahead log: %s", exc)


def upgrade_schema(engine: Engine) -> tuple[SchemaStatus, SchemaStatus]:
    """Bring the schema to head (`shoal db upgrade`); returns the status before and after. A database made before
    migrations is adopted first: when it holds the initial revision's tables, columns and indexes it is stamped."""
    with migration_lock(engine) as connection:
        before = schema_status(connection)
        if before.state == "unknown":
            raise _refusal(engine, before)
        if before.state == "unversioned":
            _adopt(engine, connection)
        if before.state != "current":
            _upgrade(connection, "head")
        return before, schema_status(connection)


def current_status(engine: Engine) -> SchemaStatus:
    """The schema's status, read without the lock (`shoal db current`)."""
    with engine.execution_options(**READ_ONLY).connect() as connection:
        return schema_status(connection)


@contextmanager
def migration_lock(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the migration lock until it ends: PostgreSQL's transaction-level advisory lock
    (released at commit or rollback, so it never stays behind on a pooled connection), or SQLite's write lock,
    which the begin listener takes with BEGIN IMMEDIATE. Migrations run inside it, on this connection."""
    with engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        yield connection


def schema_status(connection: Connection) -> SchemaStatus:
    tables = set(inspect(connection).get_table_names())
    current: tuple[str, ...] = ()
    if VERSION_TABLE in tables:
        current = tuple(sorted(connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()))
    head = _heads()
    if not current:
        state = "unversioned" if tables & set(SQLModel.metadata.tables) else "empty"
    elif set(current) == set(head):
        state = "current"
    elif set(current) <= _known_revisions():
        state = "outdated"
    else:
        state = "unknown"
    return SchemaStatus(current, head, state)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code: the scripts are in the package, env.py uses `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def autogenerate_revision(message: str) -> Path:
    """Write the next revision: what `gateway/models.py` has that the migrations do not make (for developers,
    in a source checkout). A scratch SQLite database is upgraded to head and compared with the models."""
    with tempfile.TemporaryDirectory(prefix="shoal-revision-") as scratch:
        engine = new_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        try:
            with migration_lock(engine) as connection:
                _upgrade(connection, "head")
                if not compare_metadata(MigrationContext.configure(connection), SQLModel.metadata):
                    raise ConfigurationError("the migrations already make the schema of gateway/models.py")
                numbers = [int(revision) for revision in _known_revisions() if revision.isdigit()]
                script = command.revision(alembic_config(connection), message, autogenerate=True,
                                          rev_id=f"{max(numbers, default=0) + 1:04d}")
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    _heads.cache_clear()
    _known_revisions.cache_clear()
    return Path(script.path)


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


def _adopt(engine: Engine, connection: Connection) -> None:
    have = _shape(connection)
    missing = []
    for table, items in sorted(_baseline_shape().items()):
        if table not in have:
            missing.append(f"table {table}")
        else:
            missing.extend(f"{table} {item}" for item in sorted(items - have[table]))
    if missing:
        raise ConfigurationError(
            f"the database {_display(engine)} has some of Shoal's tables but no schema revision, and it is not the "
            f"schema of the first migrated release: missing {', '.join(missing[:12])}",
            hint="point --database-url at a Shoal database, or restore one")
    command.stamp(alembic_config(connection), BASELINE)


def _shape(connection: Connection) -> dict[str, set[str]]:
    """Each table's columns and index names."""
    inspector = inspect(connection)
    return {
        table: {f"column {column['name']}" for column in inspector.get_columns(table)}
        | {f"index {index['name']}" for index in inspector.get_indexes(table)}
        for table in inspector.get_table_names() if table != VERSION_TABLE
    }


@functools.cache
def _baseline_shape() -> dict[str, set[str]]:
    """The initial revision's tables, columns and indexes, made in a scratch in-memory SQLite database."""
    scratch = new_engine("sqlite://")
    try:
        with migration_lock(scratch) as connection:
            _upgrade(connection, BASELINE)
            return _shape(connection)
    finally:
        scratch.dispose()


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def _heads() -> tuple[str, ...]:
    return tuple(sorted(_scripts().get_heads()))


@functools.cache
def _known_revisions() -> set[str]:
    return {script.revision for script in _scripts().walk_revisions()}


def _display(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _refusal(engine: Engine, status: SchemaStatus) -> ConfigurationError:
    database, head = _display(engine), ", ".join(status.head)
    if status.state == "unknown":
        return ConfigurationError(
            f"the database {database} is at schema revision {status.describe()}, which this gateway does not know "
            f"(it needs {head}): a newer Shoal has upgraded it",
            hint="run the Shoal release that upgraded the database, or a newer one")
    found = ("has Shoal's tables but no schema revision (made before migrations)" if status.state == "unversioned"
             else f"is at schema revision {status.describe()}")
    return ConfigurationError(f"the database {database} {found}; this gateway needs {head}: {UPGRADE_HINT}",
                              hint=UPGRADE_HINT)


def _tune_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN; take control so each writing transaction takes the
    # write lock up front (BEGIN IMMEDIATE) and concurrent writers wait instead of failing on a lock upgrade.
    # Reads (an engine with READ_ONLY options) begin DEFERRED and run beside writers.
    #
    # Writers of this process queue on `writing` before BEGIN IMMEDIATE, and the lock passes on as soon as
    # COMMIT or ROLLBACK has run: SQLite's own busy handler would instead let them poll the lock with sleeps
    # that grow to 100 ms. busy_timeout still covers writers in other processes (`shoal db`, a second gateway).
    writing = threading.Lock()
    holder = "shoal_write_lock"

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode == "IMMEDIATE" and not connection.info.get(holder):
            writing.acquire()
            connection.info[holder] = True
        try:
            connection.exec_driver_sql(f"BEGIN {mode}")
        except BaseException:
            _end(connection, "ROLLBACK")
            raise

    def _end(connection: Connection, statement: str) -> None:
        """Run COMMIT or ROLLBACK here (pysqlite's own commit() then finds no transaction and does nothing), so
        that the write lock is handed on only once the transaction is over."""
        try:
            dbapi_connection = connection.connection.dbapi_connection
            if dbapi_connection is not None and dbapi_connection.in_transaction:
                dbapi_connection.execute(statement)
        finally:
            if connection.info.pop(holder, False):
                writing.release()

    event.listen(engine, "commit", lambda connection: _end(connection, "COMMIT"))
    event.listen(engine, "rollback", lambda connection: _end(connection, "ROLLBACK"))
