"""Executors: where visits run. ``LocalExecutor`` is the embedded default."""

from modelhopper.executors._base import BaseExecutor, StepOutcome, VisitResult, VisitTask
from modelhopper.executors._local import LocalExecutor

__all__ = ["BaseExecutor", "LocalExecutor", "StepOutcome", "VisitResult", "VisitTask"]
