"""The gateway's schema migrations (Alembic), shipped inside the package so an installed gateway can upgrade.

`gateway.db` builds the Alembic configuration in code (no alembic.ini) and hands `env.py` a connection that
already holds the migration lock. Operators run `shoal db upgrade`; an empty database is upgraded at start.

A model change needs a revision: `shoal db revision -m "what changed"` (from a source checkout) upgrades a
scratch SQLite database to head, autogenerates the difference to `gateway/models.py` into `versions/`, and
names it with the next number. Review it by hand (it must run on SQLite and PostgreSQL; use
`op.batch_alter_table` for changes SQLite cannot ALTER) before committing.
"""
