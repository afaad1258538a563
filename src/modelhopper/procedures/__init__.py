"""Procedures: the policies that decide which MSTs to train (grid, random, ...)."""

from modelhopper.procedures._base import MST, BaseProcedure, Decision, Direction
from modelhopper.procedures._grid import GridSearch
from modelhopper.procedures._random import RandomSearch

__all__ = ["MST", "BaseProcedure", "Decision", "Direction", "GridSearch", "RandomSearch"]
