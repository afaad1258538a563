"""Procedures: the policies that decide which MSTs to train; the experiment runs them on MOP."""

from modelhopper.procedures._base import (
    MST,
    BaseProcedure,
    Decision,
    Direction,
    EpochResult,
    Trainer,
)
from modelhopper.procedures._grid import GridSearch
from modelhopper.procedures._hyperband import ASHA, Hyperband, SuccessiveHalving, rungs
from modelhopper.procedures._optuna import OptunaSearch, TPESearch
from modelhopper.procedures._pbt import PBT
from modelhopper.procedures._random import RandomSearch

__all__ = [
    "ASHA",
    "MST",
    "PBT",
    "BaseProcedure",
    "Decision",
    "Direction",
    "EpochResult",
    "GridSearch",
    "Hyperband",
    "OptunaSearch",
    "RandomSearch",
    "SuccessiveHalving",
    "TPESearch",
    "Trainer",
    "rungs",
]
