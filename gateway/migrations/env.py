"""Alembic's environment: runs the migrations on the connection `gateway.db` put in the config's attributes."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from gateway import models  # noqa: F401  (registers the tables)


def render_item(type_: str, obj: Any, _autogen_context: Any) -> str | Literal[False]:
    """Autogenerate writes SQLModel's `AutoString` as the plain `sa.String` it is, so revisions import no SQLModel."""
    if type_ == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("the gateway's migrations run through gateway.db (shoal db upgrade), not the alembic CLI")
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=True,  # ALTERs that SQLite lacks become copy-and-move there, plain ALTERs elsewhere
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
