"""MSTs: warm_start (clones start from their parent's weights) and priority (HITL).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("msts") as batch:
        batch.add_column(
            sa.Column("warm_start", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("msts") as batch:
        batch.drop_column("priority")
        batch.drop_column("warm_start")
