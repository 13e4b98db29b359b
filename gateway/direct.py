"""SQL Core statements of the hot paths run straight through the DB-API cursor of the transaction's connection.

SQLAlchemy's execution of a statement (an execution context, events, parameter and result handling) costs about
35 µs, ten times what SQLite takes to run most of these, and a completion that claims runs 15 of them while it
holds SQLite's write lock. Here a statement is compiled once per dialect, and its values and results go through the
type processors SQLAlchemy itself would apply, so that the rows are those `Connection.execute` gives: tuples whose
columns are also attributes, with `_mapping`.

    rows = direct.run(db, statements.NODE, {"node": node_id})
    node = rows.first()

For SELECT, UPDATE and DELETE statements built once (each is compiled once and kept: never pass one built per
call); an UPDATE sets what its `values()` names, nothing more, and returns the rows of its `returning()`. Anything
else, and a statement with an empty list for an expanding parameter, goes through SQLAlchemy.

    direct.insert(db, EVENTS, rows)

INSERTs rows (dicts with the same keys) into a table, as many to a statement as the database takes, filling in
the scalar defaults of the columns they leave out; rows that leave out a column whose default is computed go
through SQLAlchemy.

    direct.later(session, JOBS, rows)
    ...
    direct.insert_later(session)

keeps rows in the session until `insert_later` inserts all it kept, each table's in one `insert`: a batch of jobs,
each adding its rows as it is stored, inserts them with a statement per table instead of several per job. The caller
inserts them before any statement that needs them.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ClauseElement, Connection, Executable, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

_EXPANDING = "__[POSTCOMPILE_{}]"
# values one statement may carry: SQLite's limit (999 before 3.32), PostgreSQL's protocol's
_MOST_VALUES = {"sqlite": 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999, "postgresql": 65_535}


class Rows(list[Any]):
    """A statement's rows, with the parts of SQLAlchemy's `Result` the store uses."""

    def first(self) -> Any:
        return self[0] if self else None

    def all(self) -> list[Any]:
        return list(self)

    def scalars(self) -> Rows:
        return Rows(row[0] for row in self)

    def scalar_one(self) -> Any:
        if len(self) != 1:
            raise LookupError(f"expected one row, got {len(self)}")
        return self[0][0]


@dataclass
class _Compiled:
    text: str
    positional: bool
    names: tuple[str, ...]  # the parameters in their order (positional paramstyles)
    defaults: dict[str, Any]  # the statement's own values (literals in it)
    expanding: frozenset[str]
    processors: dict[str, Callable[[Any], Any]]
    row: type | None  # None: the statement returns no rows
    types: tuple[Any, ...]  # of the result's columns
    results: tuple[Callable[[Any], Any] | None, ...] | None = None  # their processors, once the driver has said
    # what it returns (PostgreSQL's depend on the column's type there)


def run(db: Session | Connection, statement: Executable, params: dict[str, Any] | None = None) -> Rows:
    """The statement's rows (none for UPDATE and DELETE), run in `db`'s transaction (a session's pending changes
    are flushed first, as its own `execute` would)."""
    if isinstance(db, Session):
        db.flush()
        db = db.connection()
    params = params or {}
    compiled = _compile(statement, db.dialect)
    values = {} if compiled is None else compiled.defaults | params  # with the statement's own (its IN lists)
    if compiled is None or any(not values.get(name) for name in compiled.expanding):
        result = db.execute(statement, params)
        return Rows(result.all()) if result.returns_rows else Rows()
    text, values = _bind(compiled, values)
    cursor = _execute(db, text, values)
    try:
        if compiled.row is None:
            return Rows()
        fetched = cursor.fetchall()
        if compiled.results is None:
            compiled.results = tuple(kind._cached_result_processor(db.dialect, described[1])
                                     for kind, described in zip(compiled.types, cursor.description, strict=True))
    finally:
        cursor.close()
    make, processors = compiled.row, compiled.results
    if not any(processors):
        return Rows(make(*row) for row in fetched)
    return Rows(make(*(value if process is None else process(value) for process, value in zip(processors, row,
                                                                                             strict=True)))
                for row in fetched)


@dataclass
class _Insert:
    head: str  # INSERT INTO table (columns) VALUES
    row: str  # one row's placeholders
    keys: tuple[str, ...]  # the rows' keys, in the order of the placeholders
    defaults: tuple[Any, ...]  # values of the columns the rows leave out, after theirs
    processors: tuple[Callable[[Any], Any] | None, ...]  # of the keys' columns
    rows: int  # at most in one statement


def insert(db: Session | Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT `rows` into `table`, in the transaction of `db` (a session's pending changes are flushed first)."""
    if isinstance(db, Session):
        db.flush()
        db = db.connection()
    if not rows:
        return
    keys = rows[0].keys()
    plan = _insert_plan(table, db.dialect, tuple(keys))
    if plan is None or any(row.keys() != keys for row in rows):
        db.execute(table.insert(), rows)
        return
    for start in range(0, len(rows), plan.rows):
        part = rows[start:start + plan.rows]
        values: list[Any] = []
        for row in part:
            values.extend(row[key] if process is None else process(row[key])
                          for key, process in zip(plan.keys, plan.processors, strict=True))
            values.extend(plan.defaults)
        _execute(db, plan.head + ", ".join([plan.row] * len(part)), tuple(values)).close()


_LATER = "shoal_direct_later"  # in Session.info: {table's name: (table, rows)}


def later(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Keep `rows` for `insert_later`."""
    session.info.setdefault(_LATER, {}).setdefault(table.name, (table, []))[1].extend(rows)


def insert_later(session: Session) -> None:
    """Insert the rows kept with `later`."""
    for table, rows in session.info.pop(_LATER, {}).values():
        insert(session, table, rows)


def _insert_plan(table: Table, dialect: Dialect, keys: tuple[str, ...]) -> _Insert | None:
    return cast(_Insert | None, _kept(table, (dialect.name, keys), lambda: _planned(table, dialect, keys)))


def _planned(table: Table, dialect: Dialect, keys: tuple[str, ...]) -> _Insert | None:
    if dialect.name not in _MOST_VALUES or dialect.paramstyle not in ("qmark", "pyformat") \
            or not set(keys) <= set(table.c.keys()):
        return None
    left_out = [column for column in table.c if column.key not in keys and column.default is not None]
    if not all(getattr(column.default, "is_scalar", False) for column in left_out):
        return None  # computed in Python as SQLAlchemy inserts the row
    columns = [table.c[key] for key in keys] + left_out
    processors = tuple(column.type._cached_bind_processor(dialect) for column in columns)
    defaults = tuple(getattr(column.default, "arg", None) for column in left_out)
    defaults = tuple(value if process is None else process(value)
                     for value, process in zip(defaults, processors[len(keys):], strict=True))
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    return _Insert(f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
                   f"({', '.join(quote(column.name) for column in columns)}) VALUES ",
                   f"({', '.join([mark] * len(columns))})", keys, defaults, processors[:len(keys)],
                   max(1, _MOST_VALUES[dialect.name] // len(columns)))


def _execute(db: Connection, text: str, values: Any) -> Any:
    """A cursor that has run `text`, which listeners (tests that count statements) saw as SQLAlchemy's would be."""
    raw = db.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        if db.dispatch.before_cursor_execute:
            db.dispatch.before_cursor_execute(db, cursor, text, values, None, False)
        cursor.execute(text, values)
    except BaseException:
        cursor.close()
        raise
    return cursor


def _bind(compiled: _Compiled, values: dict[str, Any]) -> tuple[str, Any]:
    for name, process in compiled.processors.items():
        if name in values and values[name] is not None:
            values[name] = [process(v) for v in values[name]] if name in compiled.expanding else process(values[name])
    text = compiled.text
    if compiled.positional:
        ordered: list[Any] = []
        for name in compiled.names:
            if name in compiled.expanding:
                items = list(values[name])
                text = text.replace(_EXPANDING.format(name), ", ".join("?" * len(items)), 1)
                ordered.extend(items)
            else:
                ordered.append(values[name])
        return text, tuple(ordered)
    for name in compiled.expanding:
        items = list(values.pop(name))
        keys = [f"{name}_{i}" for i in range(1, len(items) + 1)]
        text = text.replace(_EXPANDING.format(name), ", ".join(f"%({key})s" for key in keys))
        values.update(zip(keys, items, strict=True))
    return text, values


# (a statement's or table's id, the dialect, …): the statement or table (kept, so that its id stays its own) and
# what was made of it for that dialect
_CACHE: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def _kept(source: Any, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    full = (id(source), *key)
    if full not in _CACHE:
        _CACHE[full] = source, make()
    return _CACHE[full][1]


def _compile(statement: Executable, dialect: Dialect) -> _Compiled | None:
    return cast(_Compiled | None, _kept(statement, (dialect.name,), lambda: _compiled(statement, dialect)))


def _compiled(statement: Executable, dialect: Dialect) -> _Compiled | None:
    compiled = cast(ClauseElement, statement).compile(dialect=dialect)
    if not isinstance(compiled, SQLCompiler) or compiled.isinsert or dialect.paramstyle not in ("qmark", "pyformat"):
        return None
    if compiled.positional and compiled.positiontup is None:
        return None
    binds = {name: bind for bind, name in compiled.bind_names.items()}
    processors: dict[str, Callable[[Any], Any]] = {}
    for name, bind in binds.items():
        process = bind.type._cached_bind_processor(dialect)
        if process is not None:
            processors[name] = process
    defaults = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
    expanding = frozenset(name for name, bind in binds.items() if bind.expanding)
    row: type | None = None
    types: tuple[Any, ...] = ()
    if not (compiled.isupdate or compiled.isdelete) or compiled.returning:
        keys = [column.keyname for column in compiled._result_columns]
        if len(set(keys)) != len(keys) or not all(key.isidentifier() and not key.startswith("_") for key in keys):
            return None
        row = _row_type(tuple(keys))
        types = tuple(column.type for column in compiled._result_columns)
    return _Compiled(compiled.string, bool(compiled.positional), tuple(compiled.positiontup or ()), defaults,
                     expanding, processors, row, types)


def _row_type(keys: tuple[str, ...]) -> type:
    base: Any = collections.namedtuple("Row", keys)  # type: ignore[misc]

    class Row(base):
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(keys, self, strict=True))

    return Row
