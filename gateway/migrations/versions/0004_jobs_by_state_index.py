"""Jobs listed by state: an index on namespace, state and creation time, so that `job list --state X` (and a
client asking whether any job is still running) seeks the jobs in that state, newest first, instead of reading
every job of the namespace.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_state", "jobs", ["namespace", "state", "create_time", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_state", table_name="jobs")
