"""Nodes oldest first: an index on creation time and ID, which scheduling pages through (keyset paging) as it
looks for a node that fits a job, so that a page is an index range instead of a sort of every node.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_nodes_age", "nodes", ["create_time", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_nodes_age", table_name="nodes")
