"""A job's spec is stored once, as its current version's in job_versions: the jobs row, which every change of the
job's state rewrites, no longer carries a copy (with a module sent inline, tens of KB that SQLite wrote again with
each change).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every job's current version is there already (a submission writes both); kept safe for any that is not
    op.execute("INSERT INTO job_versions (job_id, version, spec, create_time) "
               "SELECT id, version, spec, create_time FROM jobs WHERE NOT EXISTS (SELECT 1 FROM job_versions v "
               "WHERE v.job_id = jobs.id AND v.version = jobs.version)")
    op.drop_column("jobs", "spec")


def downgrade() -> None:
    op.add_column("jobs", sa.Column("spec", sa.JSON(), nullable=True))
    op.execute("UPDATE jobs SET spec = (SELECT v.spec FROM job_versions v "
               "WHERE v.job_id = jobs.id AND v.version = jobs.version)")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("spec", existing_type=sa.JSON(), nullable=False)
