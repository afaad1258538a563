"""The initial schema: experiments, MSTs, steps, epochs, events, commands, writers.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types in _schema.py: a revision must not change when the ORM does.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def _experiment_id(table: str, *, primary_key: bool = False) -> sa.Column:
    return sa.Column(
        "experiment_id",
        _ID,
        sa.ForeignKey(
            "experiments.id", ondelete="CASCADE", name=f"fk_{table}_experiment_id_experiments"
        ),
        primary_key=primary_key,
        nullable=False,
    )


def _mst_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["experiment_id", "mst_id"],
        ["msts.experiment_id", "msts.mst_id"],
        ondelete="CASCADE",
        name=f"fk_{table}_experiment_id_mst_id_msts",
    )


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("procedure", sa.String(255), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("n_workers", sa.Integer(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
        sa.UniqueConstraint("name", name="uq_experiments_name"),
    )
    op.create_index("ix_experiments_created_at", "experiments", ["created_at"])

    op.create_table(
        "msts",
        _experiment_id("msts", primary_key=True),
        sa.Column("mst_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("parent", sa.Integer(), nullable=True),
        sa.Column("n_epochs", sa.Integer(), nullable=False),
        sa.Column("checkpoint", sa.Text(), nullable=True),
        sa.Column("best_checkpoint", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", "mst_id", name="pk_msts"),
    )

    op.create_table(
        "steps",
        sa.Column("id", _ID, primary_key=True),
        _experiment_id("steps"),
        sa.Column("mst_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("worker", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("loss_sum", sa.Float(), nullable=True),  # NULL is NaN
        sa.Column("metric_sums", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("finished_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_steps"),
        _mst_fk("steps"),
        sa.UniqueConstraint(
            "experiment_id",
            "mst_id",
            "epoch",
            "kind",
            "shard",
            name="uq_steps_experiment_id_mst_id_epoch_kind_shard",
        ),
    )

    op.create_table(
        "epochs",
        _experiment_id("epochs", primary_key=True),
        sa.Column("mst_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("train_order", sa.JSON(), nullable=False),
        sa.Column("eval_order", sa.JSON(), nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.Column("eval_seconds", sa.Float(), nullable=True),
        sa.Column("finished_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", "mst_id", "epoch", name="pk_epochs"),
        _mst_fk("epochs"),
    )

    op.create_table(
        "events",
        sa.Column("id", _ID, primary_key=True),
        _experiment_id("events"),
        sa.Column("time", _TIME, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("mst_id", sa.Integer(), nullable=True),
        sa.Column("worker", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        _mst_fk("events"),
    )
    op.create_index("ix_events_experiment_id_id", "events", ["experiment_id", "id"])

    op.create_table(
        "commands",
        sa.Column("id", _ID, primary_key=True),
        _experiment_id("commands"),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("applied_at", _TIME, nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_commands"),
    )
    op.create_index(
        "ix_commands_experiment_id_status_id", "commands", ["experiment_id", "status", "id"]
    )

    op.create_table(
        "writers",
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("process_started", sa.Float(), nullable=False),
        sa.Column("seen_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("host", "pid", name="pk_writers"),
    )


def downgrade() -> None:
    for table in ("writers", "commands", "events", "epochs", "steps", "msts", "experiments"):
        op.drop_table(table)
