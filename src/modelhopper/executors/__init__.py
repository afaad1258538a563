"""Executors: where visits run: ``LocalExecutor`` (the default) or ``RayExecutor``."""

from __future__ import annotations

from typing import Any

from modelhopper.errors import ConfigError
from modelhopper.executors._base import (
    BaseExecutor,
    PoolChanges,
    State,
    StateLostError,
    StateRef,
    StateSource,
    StepOutcome,
    VisitResult,
    VisitTask,
    state_bytes,
    state_nbytes,
)
from modelhopper.executors._group import GROUP_UNSUPPORTED, GroupSpec
from modelhopper.executors._local import LocalExecutor

__all__ = [
    "GROUP_UNSUPPORTED",
    "BaseExecutor",
    "GroupSpec",
    "LocalExecutor",
    "PoolChanges",
    "RayExecutor",
    "State",
    "StateLostError",
    "StateRef",
    "StateSource",
    "StepOutcome",
    "VisitResult",
    "VisitTask",
    "resolve_executor",
    "state_bytes",
    "state_nbytes",
]


_NAMES = ("local", "ray")


def resolve_executor(executor: BaseExecutor | str | None) -> BaseExecutor:
    """An executor instance from an instance, a name ('local', 'ray') or None (local)."""
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        from modelhopper.executors._ray import RayExecutor

        return RayExecutor()
    if isinstance(executor, BaseExecutor):
        return executor
    raise ConfigError(
        f"executor must be 'local', 'ray' or a BaseExecutor such as RayExecutor(address=...), "
        f"got {executor!r}"
    )


def __getattr__(name: str) -> Any:
    # Ray is an optional extra: importing modelhopper must not import it.
    if name == "RayExecutor":
        from modelhopper.executors._ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
