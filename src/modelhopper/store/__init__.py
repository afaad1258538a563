"""The store: run metadata in SQL, a SQLite file by default or PostgreSQL by URL."""

from __future__ import annotations

from modelhopper.store._base import (
    BaseStore,
    CommandRecord,
    CommandStatus,
    EpochRecord,
    EventKind,
    EventRecord,
    ExperimentRecord,
    MSTRecord,
    RunStatus,
    StepRecord,
    VisitRecord,
)
from modelhopper.store._engine import DEFAULT_ROOT
from modelhopper.store._sql import SQLStore, open_store

__all__ = [
    "DEFAULT_ROOT",
    "BaseStore",
    "CommandRecord",
    "CommandStatus",
    "EpochRecord",
    "EventKind",
    "EventRecord",
    "ExperimentRecord",
    "MSTRecord",
    "RunStatus",
    "SQLStore",
    "StepRecord",
    "VisitRecord",
    "open_store",
]
