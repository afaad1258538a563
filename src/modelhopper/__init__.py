"""modelhopper: deep-learning model selection at scale with Model Hopper Parallelism (MOP)."""

from __future__ import annotations

from typing import Any

from modelhopper._keras import KerasEstimator
from modelhopper._version import __version__
from modelhopper.data import Dataset, Split, StreamedSplit, datasets
from modelhopper.errors import (
    AllMSTsFailedError,
    ConfigError,
    DataError,
    EstimatorError,
    ExecutorError,
    ModelHopperError,
    MSTFailedError,
    SpaceError,
    StoreError,
)
from modelhopper.estimator import Estimator, per_example
from modelhopper.executors import BaseExecutor, LocalExecutor
from modelhopper.experiment import load_model, load_result, resume
from modelhopper.procedures import (
    ASHA,
    MST,
    PBT,
    BaseProcedure,
    Decision,
    Direction,
    GridSearch,
    Hyperband,
    OptunaSearch,
    RandomSearch,
    SuccessiveHalving,
    TPESearch,
)
from modelhopper.representations import MaterialiseBudget, Representation
from modelhopper.result import MSTResult, MSTStatus, Result, RunStats
from modelhopper.scheduling import MOPScheduler, SchedulingPolicy
from modelhopper.space import (
    Space,
    choice,
    grid,
    loguniform,
    quniform,
    randint,
    uniform,
)


def __getattr__(name: str) -> Any:
    # RayExecutor needs the optional Ray extra: import it only when asked for.
    if name == "RayExecutor":
        from modelhopper.executors._ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ASHA",
    "Hyperband",
    "OptunaSearch",
    "PBT",
    "SuccessiveHalving",
    "TPESearch",
    "AllMSTsFailedError",
    "BaseExecutor",
    "BaseProcedure",
    "ConfigError",
    "DataError",
    "Dataset",
    "Decision",
    "Direction",
    "Estimator",
    "KerasEstimator",
    "EstimatorError",
    "ExecutorError",
    "StoreError",
    "load_model",
    "load_result",
    "resume",
    "GridSearch",
    "LocalExecutor",
    "MOPScheduler",
    "MST",
    "MSTFailedError",
    "MaterialiseBudget",
    "MSTResult",
    "MSTStatus",
    "ModelHopperError",
    "RandomSearch",
    "Representation",
    "RayExecutor",
    "Result",
    "RunStats",
    "SchedulingPolicy",
    "Space",
    "SpaceError",
    "Split",
    "StreamedSplit",
    "__version__",
    "per_example",
    "choice",
    "datasets",
    "grid",
    "loguniform",
    "quniform",
    "randint",
    "uniform",
]
