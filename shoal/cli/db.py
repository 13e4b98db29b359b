"""`shoal db`: the gateway's database schema (Alembic migrations shipped in the gateway package).

The database is the gateway's: `--database-url`, else SHOAL_DATABASE_URL, else SQLite in the data dir.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine

DATABASE_HELP = "The gateway's database (default: SHOAL_DATABASE_URL, else SQLite in the data dir)."


def _database_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--data-dir", default=None, type=click.Path(path_type=Path),
                           help="The gateway's data dir, for its SQLite database (~/.shoal).")(command)
    return click.option("--database-url", default=None, help=DATABASE_HELP)(command)


@contextmanager
def _engine(database_url: str | None, data_dir: Path | None, *, create: bool) -> Iterator[Engine | None]:
    """The gateway's database as `serve` would open it; None when its SQLite file is missing and not `create`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, OperationalError

    from gateway.db import new_engine
    from gateway.errors import ConfigurationError
    from gateway.settings import Settings

    try:
        settings = Settings.from_env(database_url=database_url, data_dir=data_dir)
        url = make_url(settings.database)
    except (ConfigurationError, ArgumentError) as exc:
        raise click.ClickException(str(exc)) from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)
        if not path.exists():
            if not create:
                yield None
                return
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = new_engine(settings.database)
    try:
        yield engine
    except ConfigurationError as exc:
        raise click.ClickException(f"{exc.message}\nHint: {exc.hint}" if exc.hint else exc.message) from None
    except OperationalError as exc:
        raise click.ClickException(f"cannot use the database {url.render_as_string()}: {exc.orig}") from None
    finally:
        engine.dispose()


@click.group()
def db() -> None:
    """The gateway's database schema."""


@db.command()
@_database_options
def upgrade(database_url: str | None, data_dir: Path | None) -> None:
    """Upgrade the schema to this release's head (gateways refuse an older one)."""
    from gateway.db import upgrade_schema

    with _engine(database_url, data_dir, create=True) as engine:
        assert engine is not None
        before, after = upgrade_schema(engine)
        where = engine.url.render_as_string(hide_password=True)
        if before.state == "current":
            click.echo(f"{where} is at {after.describe()}: nothing to do.")
        else:
            click.echo(f"Upgraded {where} from {before.describe()} to {after.describe()}.")


@db.command()
@_database_options
def current(database_url: str | None, data_dir: Path | None) -> None:
    """Print the schema's revision ("(head)" when it is this release's)."""
    from gateway.db import current_status

    with _engine(database_url, data_dir, create=False) as engine:
        click.echo("none" if engine is None else current_status(engine).describe())


@db.command(hidden=True)
@click.option("-m", "--message", required=True, help="What changed, for the revision's name.")
def revision(message: str) -> None:
    """Developers: autogenerate the next revision from gateway/models.py (in a source checkout)."""
    from gateway.db import autogenerate_revision
    from gateway.errors import ConfigurationError

    try:
        path = autogenerate_revision(message)
    except ConfigurationError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Wrote {path}: review it (SQLite and PostgreSQL) before committing.")
