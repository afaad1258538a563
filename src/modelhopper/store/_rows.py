"""Store values: checks and conversions between records and rows."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from modelhopper._vocabulary import MSTStatus, StepKind
from modelhopper.errors import StoreError
from modelhopper.store._base import (
    CommandRecord,
    CommandStatus,
    EpochRecord,
    ExperimentRecord,
    MSTRecord,
    RunStatus,
    StepRecord,
)
from modelhopper.store._schema import (
    CommandRow,
    ExperimentRow,
    MSTRow,
)

_MST_FIELDS = frozenset(f.name for f in dataclasses.fields(MSTRecord)) - {
    "mst_id",
    "created_at",
    "updated_at",
}
E = TypeVar("E", bound=Enum)
R = TypeVar("R")


# -- values ------------------------------------------------------------------------------
def _reason(error: SQLAlchemyError) -> str:
    cause = getattr(error, "orig", None) or error
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line}"


def _newest_first(query: Any) -> Any:
    return query.order_by(ExperimentRow.created_at.desc(), ExperimentRow.id.desc())


def _enum(enum: type[E], value: Any, what: str) -> E:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in enum)
        raise StoreError(f"{what} must be a {enum.__name__} ({choices}), got {value!r}") from None


# Values a column takes as they are: checked first, by exact type (a step row has ~10
# fields, and ``isinstance(value, os.PathLike)`` is an ABC check).
_PLAIN = frozenset({int, float, str, bool, type(None), datetime, dict, list})


def _text(value: Any) -> Any:
    """Enums by value and paths as strings: what the columns hold."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _int64(what: str, value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise StoreError(
            f"{what} must fit in a signed 64-bit integer to be stored, got {value}; "
            "use a smaller seed (e.g. seed % 2**63)"
        )
    return value


def _check_mst_fields(fields: dict[str, Any], where: str) -> None:
    unknown = sorted(set(fields) - _MST_FIELDS)
    if unknown:
        raise StoreError(
            f"{where} got unknown MST field(s) {unknown}; the fields that can change are "
            f"{sorted(_MST_FIELDS)}"
        )
    if "seed" in fields:
        _int64("MST seed", fields["seed"])
    if "status" in fields:
        _enum(MSTStatus, fields["status"], "MST status")


def _check_same_mst(mst_id: int, steps: list[StepRecord], epochs: list[EpochRecord]) -> None:
    ids = [step.mst_id for step in steps] + [epoch.mst_id for epoch in epochs]
    others = sorted({i for i in ids if i != mst_id})
    if others:
        raise StoreError(
            f"record_visit records one MST's visit (mst_id={mst_id}) but got steps or epochs "
            f"of mst_id {others}; record each MST's results in its own call"
        )


# -- rows <-> records ----------------------------------------------------------------
def _experiment_record(row: ExperimentRow) -> ExperimentRecord:
    return _to_record(ExperimentRecord, row, status=RunStatus(row.status))


def _mst_record(row: MSTRow) -> MSTRecord:
    return _to_record(MSTRecord, row, status=MSTStatus(row.status))


def _step_record(row: Any) -> StepRecord:
    return _to_record(StepRecord, row, kind=StepKind(row.kind))


def _command_record(row: CommandRow) -> CommandRecord:
    return _to_record(CommandRecord, row, status=CommandStatus(row.status))


def _to_record(cls: type[R], row: Any, **converted: Any) -> R:
    """A record from a row: each field from the column of that name, or as ``converted``."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in converted]  # type: ignore[arg-type]
    return cls(**{name: getattr(row, name) for name in names}, **converted)


def _mst_values(experiment_id: int, record: MSTRecord, now: datetime) -> dict[str, Any]:
    """An MST's columns for a Core insert, checked (its status, a seed that fits)."""
    created = record.created_at or now
    _enum(MSTStatus, record.status, f"status of MST {record.mst_id}")
    seed = _int64(f"seed of MST {record.mst_id}", record.seed)
    return _columns(
        record,
        experiment_id=experiment_id,
        seed=seed,
        created_at=created,
        updated_at=record.updated_at or created,
    )


def _finished(
    record: StepRecord | EpochRecord, experiment_id: int, now: datetime
) -> dict[str, Any]:
    """The columns of a step or an epoch, finished now unless the record says when."""
    return _columns(record, experiment_id=experiment_id, finished_at=record.finished_at or now)


def _columns(record: Any, **converted: Any) -> dict[str, Any]:
    """A row's values from a record: each field as a column of that name, or as ``converted``."""
    values = {name: _text(getattr(record, name)) for name in _field_names(type(record))}
    return {**values, **converted}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    # once per record class: dataclasses.fields per row cost ~1/3 of a step row's build
    if (names := _FIELD_NAMES.get(cls)) is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names
