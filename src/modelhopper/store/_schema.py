"""The store's tables as SQLAlchemy 2 ORM classes (the migrations create the same schema).

Conventions that hold on every backend:

- Timestamps are timezone-aware UTC datetimes when read back. SQLite keeps no
  offset, so they are written as naive UTC there and the offset is re-attached
  when read; a naive datetime handed to the store is taken to be UTC.
- JSON columns keep non-finite floats (NaN, +-inf): strict JSON (PostgreSQL's
  ``json``) has no literal for them, so they are written as ``{"$float": "nan"}``.
- Float columns keep NaN: SQLite stores NaN as NULL, so NULL means NaN there and
  on PostgreSQL alike.

A change here needs a new migration in ``migrations/versions/``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "ExperimentRow",
    "MSTRow",
    "StepRow",
    "EpochRow",
    "EventRow",
    "CommandRow",
    "WriterRow",
    "as_utc",
    "utcnow",
]

# Named constraints keep future migrations (SQLite batch mode included) able to refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT ids on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY (a 64-bit rowid).
_ID = BigInteger().with_variant(Integer(), "sqlite")

_NON_FINITE = "$float"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        # SQLite would drop the offset silently; write naive UTC so ordering by text still works.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def _encode_json(value: Any) -> Any:
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, float):
        # 'nan', 'inf', '-inf' are what float() reads back.
        return value if math.isfinite(value) else {_NON_FINITE: repr(value)}
    if isinstance(value, dict):
        return {key: _encode_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode_json(item) for item in value]
    # Checked here, not by the driver's JSON dumper, so every backend fails the same way.
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON")


def _decode_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _NON_FINITE in value:
            return float(value[_NON_FINITE])
        return {key: _decode_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_json(item) for item in value]
    return value


class JSONValue(TypeDecorator[Any]):
    """JSON that keeps NaN and infinities. Plain ``json``, not ``jsonb``: it keeps key order."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return _encode_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return _decode_json(value)


class NaNFloat(TypeDecorator[float]):
    """A double that keeps NaN (as NULL, the only way SQLite can)."""

    impl = Float
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Dialect) -> float | None:
        return None if value is None or math.isnan(value) else value

    def process_result_value(self, value: float | None, dialect: Dialect) -> float:
        return math.nan if value is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime,
        dict[str, Any]: JSONValue,
        list[int]: JSONValue,
    }


def _experiment_id(*, primary_key: bool = False) -> Mapped[int]:
    return mapped_column(
        _ID, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=primary_key
    )


def _mst_fk(table: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["experiment_id", "mst_id"],
        ["msts.experiment_id", "msts.mst_id"],
        ondelete="CASCADE",
        name=f"fk_{table}_experiment_id_mst_id_msts",
    )


class ExperimentRow(Base):
    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(32))
    procedure: Mapped[str] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]]
    space: Mapped[dict[str, Any]]
    seed: Mapped[int] = mapped_column(BigInteger)
    n_workers: Mapped[int]
    run_dir: Mapped[str] = mapped_column(Text)
    provenance: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class MSTRow(Base):
    __tablename__ = "msts"

    experiment_id: Mapped[int] = _experiment_id(primary_key=True)
    mst_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    params: Mapped[dict[str, Any]]
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32))
    parent: Mapped[int | None]
    warm_start: Mapped[bool] = mapped_column(server_default=false())
    priority: Mapped[int] = mapped_column(server_default="0")
    n_epochs: Mapped[int]
    checkpoint: Mapped[str | None] = mapped_column(Text)
    best_checkpoint: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class StepRow(Base):
    """One sub-epoch or evaluation; ``id`` is the finish order (the driver records as they end)."""

    __tablename__ = "steps"
    __table_args__ = (
        _mst_fk("steps"),
        # A sub-epoch is recorded once: resume continues after the recorded steps.
        UniqueConstraint("experiment_id", "mst_id", "epoch", "kind", "shard"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    experiment_id: Mapped[int] = _experiment_id()
    mst_id: Mapped[int]
    epoch: Mapped[int]
    kind: Mapped[str] = mapped_column(String(32))
    shard: Mapped[int]
    position: Mapped[int]
    worker: Mapped[int]
    n: Mapped[int] = mapped_column(BigInteger)
    loss_sum: Mapped[float] = mapped_column(NaNFloat, nullable=True)
    metric_sums: Mapped[dict[str, Any]]
    seconds: Mapped[float] = mapped_column(NaNFloat, nullable=True)
    finished_at: Mapped[datetime]


class EpochRow(Base):
    __tablename__ = "epochs"
    __table_args__ = (_mst_fk("epochs"),)

    experiment_id: Mapped[int] = _experiment_id(primary_key=True)
    mst_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    metrics: Mapped[dict[str, Any]]
    train_order: Mapped[list[int]]
    eval_order: Mapped[list[int]]
    train_seconds: Mapped[float] = mapped_column(NaNFloat, nullable=True)
    eval_seconds: Mapped[float] = mapped_column(NaNFloat, nullable=True)
    finished_at: Mapped[datetime]


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        _mst_fk("events"),  # mst_id NULL: an event about the run, not checked
        Index("ix_events_experiment_id_id", "experiment_id", "id"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    experiment_id: Mapped[int] = _experiment_id()
    time: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    mst_id: Mapped[int | None]
    worker: Mapped[int | None]
    detail: Mapped[dict[str, Any]]


class CommandRow(Base):
    __tablename__ = "commands"
    __table_args__ = (
        Index("ix_commands_experiment_id_status_id", "experiment_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    experiment_id: Mapped[int] = _experiment_id()
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    applied_at: Mapped[datetime | None]
    message: Mapped[str | None] = mapped_column(Text)
    new_mst_id: Mapped[int | None]  # the MST an applied add or clone created


class WriterRow(Base):
    """Driver processes writing to this database; SQLite uses it to warn about a second one."""

    __tablename__ = "writers"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    pid: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    process_started: Mapped[float] = mapped_column(
        Float
    )  # the process's start time: tells a recycled pid apart
    seen_at: Mapped[datetime]
