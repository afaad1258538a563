"""The exception hierarchy: every error modelhopper raises derives from ModelHopperError."""

from __future__ import annotations

__all__ = [
    "ModelHopperError",
    "SpaceError",
    "DataError",
    "ConfigError",
    "EstimatorError",
    "ExecutorError",
    "StoreError",
    "MSTFailedError",
    "AllMSTsFailedError",
]


class ModelHopperError(Exception):
    """Base class of all modelhopper errors."""


class SpaceError(ModelHopperError, ValueError):
    """A search space or one of its domains is invalid."""


class DataError(ModelHopperError, ValueError):
    """A dataset, split or shard is invalid or cannot be read."""


class ConfigError(ModelHopperError, ValueError):
    """An argument to a search, executor or CLI command is invalid."""


class EstimatorError(ModelHopperError, ValueError):
    """An Estimator (or the factory that builds it) is invalid."""


class ExecutorError(ModelHopperError, RuntimeError):
    """A worker or executor failed in a way that stops the run."""


class StoreError(ModelHopperError, RuntimeError):
    """The store (database or checkpoint files) cannot be read or written."""


class MSTFailedError(ModelHopperError, RuntimeError):
    """One MST failed (exception, non-finite loss, out of memory); the run goes on."""


class AllMSTsFailedError(ModelHopperError, RuntimeError):
    """Every MST of a run failed; the message summarises why."""
