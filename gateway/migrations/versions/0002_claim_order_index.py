"""The claim's index: waiting executions per engine in queue order, so that a claim never reads the executions of
engines its node does not run, and jumps past a job's executions in one seek (gateway/claim.py).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_executions_waiting", "executions",
                    ["compute_state", "engine", "create_time", "job_id", "partition_index", "id"], unique=False)
    op.drop_index("ix_executions_claim", table_name="executions")


def downgrade() -> None:
    op.create_index("ix_executions_claim", "executions", ["compute_state", "create_time"], unique=False)
    op.drop_index("ix_executions_waiting", table_name="executions")
