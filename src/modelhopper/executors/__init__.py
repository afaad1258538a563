"""Executors: where visits run: ``LocalExecutor`` (the default) or ``RayExecutor``."""

from __future__ import annotations

from typing import Any

from modelhopper.executors._base import (
    BaseExecutor,
    State,
    StateRef,
    StepOutcome,
    VisitResult,
    VisitTask,
    state_bytes,
    state_nbytes,
)
from modelhopper.executors._local import LocalExecutor

__all__ = [
    "BaseExecutor",
    "LocalExecutor",
    "RayExecutor",
    "State",
    "StateRef",
    "StepOutcome",
    "VisitResult",
    "VisitTask",
    "state_bytes",
    "state_nbytes",
]


def __getattr__(name: str) -> Any:
    # Ray is an optional extra: importing modelhopper must not import it.
    if name == "RayExecutor":
        from modelhopper.executors._ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
