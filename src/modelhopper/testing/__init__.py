"""Test helpers for modelhopper's interfaces: conformance suites every implementation passes.

Needs pytest (``pip install 'modelhopper[dev]'``).
"""

from __future__ import annotations

from modelhopper.testing._chaos import ChaosExecutor, Kill, KillPlan
from modelhopper.testing._estimator import EstimatorConformance
from modelhopper.testing._executor import ExecutorConformance, make_test_estimator
from modelhopper.testing._fake_trainer import EpochLog, FakeTrainer
from modelhopper.testing._lcbench import LCBench
from modelhopper.testing._store import StoreConformance
from modelhopper.testing._surrogate import (
    SimulatedTimeUp,
    SimulatedVisit,
    SurrogateExecutor,
    surrogate_dataset,
    surrogate_estimator,
)
from modelhopper.testing._throttle import Throttle

__all__ = [
    "ChaosExecutor",
    "EpochLog",
    "EstimatorConformance",
    "ExecutorConformance",
    "FakeTrainer",
    "Kill",
    "KillPlan",
    "LCBench",
    "SimulatedTimeUp",
    "SimulatedVisit",
    "StoreConformance",
    "SurrogateExecutor",
    "Throttle",
    "make_test_estimator",
    "surrogate_dataset",
    "surrogate_estimator",
]
