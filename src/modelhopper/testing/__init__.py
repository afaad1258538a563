"""Test helpers for modelhopper's interfaces: conformance suites every implementation passes.

Needs pytest (``pip install 'modelhopper[dev]'``).
"""

from __future__ import annotations

from modelhopper.testing._executor import ExecutorConformance, make_test_estimator
from modelhopper.testing._fake_trainer import EpochLog, FakeTrainer
from modelhopper.testing._store import StoreConformance

__all__ = [
    "EpochLog",
    "ExecutorConformance",
    "FakeTrainer",
    "StoreConformance",
    "make_test_estimator",
]
