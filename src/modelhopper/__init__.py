"""modelhopper: deep-learning model selection at scale with Model Hopper Parallelism (MOP)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelhopper._version import __version__

# Where each public name is defined. They are imported when first used: a process that
# needs one part does not import the rest (a worker, its estimator and executor, but not
# the store's SQLAlchemy, pandas or the procedures; a Ray actor starts ~1.3 s sooner),
# and RayExecutor only when asked for (Ray is an optional extra).
_WHERE = {
    "KerasEstimator": "modelhopper._keras",
    "Dataset": "modelhopper.data",
    "Split": "modelhopper.data",
    "StreamedSplit": "modelhopper.data",
    "datasets": "modelhopper.data",
    "Estimator": "modelhopper.estimator",
    "per_example": "modelhopper.estimator",
    "BaseExecutor": "modelhopper.executors",
    "LocalExecutor": "modelhopper.executors",
    "load_model": "modelhopper.experiment",
    "load_result": "modelhopper.experiment",
    "resume": "modelhopper.experiment",
    "MaterialiseBudget": "modelhopper.representations",
    "Representation": "modelhopper.representations",
    "MSTResult": "modelhopper.result",
    "MSTStatus": "modelhopper.result",
    "Result": "modelhopper.result",
    "RunStats": "modelhopper.result",
    "MOPScheduler": "modelhopper.scheduling",
    "SchedulingPolicy": "modelhopper.scheduling",
    "RayExecutor": "modelhopper.executors._ray",
    "AllMSTsFailedError": "modelhopper.errors",
    "ConfigError": "modelhopper.errors",
    "DataError": "modelhopper.errors",
    "EstimatorError": "modelhopper.errors",
    "ExecutorError": "modelhopper.errors",
    "ModelHopperError": "modelhopper.errors",
    "MSTFailedError": "modelhopper.errors",
    "SpaceError": "modelhopper.errors",
    "StoreError": "modelhopper.errors",
    "ASHA": "modelhopper.procedures",
    "MST": "modelhopper.procedures",
    "PBT": "modelhopper.procedures",
    "BaseProcedure": "modelhopper.procedures",
    "Decision": "modelhopper.procedures",
    "Direction": "modelhopper.procedures",
    "GridSearch": "modelhopper.procedures",
    "Hyperband": "modelhopper.procedures",
    "OptunaSearch": "modelhopper.procedures",
    "RandomSearch": "modelhopper.procedures",
    "SuccessiveHalving": "modelhopper.procedures",
    "TPESearch": "modelhopper.procedures",
    "Space": "modelhopper.space",
    "choice": "modelhopper.space",
    "grid": "modelhopper.space",
    "loguniform": "modelhopper.space",
    "quniform": "modelhopper.space",
    "randint": "modelhopper.space",
    "uniform": "modelhopper.space",
}

if TYPE_CHECKING:
    from modelhopper._keras import KerasEstimator
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
    from modelhopper.executors._ray import RayExecutor
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
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
