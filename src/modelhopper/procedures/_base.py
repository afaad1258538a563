"""The procedure interface: procedures decide which MSTs to train; they never run them."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from modelhopper.errors import ConfigError
from modelhopper.estimator import Estimator, derive_seed
from modelhopper.scheduling import SchedulingPolicy, _parse_policy
from modelhopper.space import Space

if TYPE_CHECKING:
    from modelhopper.data import Dataset
    from modelhopper.executors import BaseExecutor
    from modelhopper.result import Result
    from modelhopper.store import BaseStore

__all__ = ["MST", "Decision", "Direction", "BaseProcedure"]


class Decision(StrEnum):
    CONTINUE = "continue"
    STOP = "stop"


class Direction(StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


@dataclass(frozen=True)
class MST:
    """A model selection triple: one concrete point of the space, with its id and seed."""

    id: int
    params: dict[str, Any] = field(hash=False)
    seed: int
    parent: int | None = None


def _check_positive_int(name: str, value: object, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}; e.g. {example}")
    return value


class BaseProcedure(ABC):
    """Proposes MSTs and judges each epoch's result; the experiment runs them on MOP."""

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        epochs: int,
        metric: str = "val_loss",
        direction: Direction | str = Direction.MINIMIZE,
        seed: int = 0,
        policy: SchedulingPolicy | str = SchedulingPolicy.LONGEST_REMAINING,
    ) -> None:
        if not callable(make_estimator):
            raise ConfigError(
                f"make_estimator must be a function params -> Estimator, got {make_estimator!r}"
            )
        self.make_estimator = make_estimator
        self.space = space if isinstance(space, Space) else Space(space)
        self.epochs = _check_positive_int("epochs", epochs, "epochs=5")
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"metric must be a metric name such as 'val_loss', got {metric!r}")
        self.metric = metric
        try:
            self.direction = Direction(direction)
        except ValueError:
            raise ConfigError(
                f"direction must be 'maximize' or 'minimize', got {direction!r}"
            ) from None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.policy = _parse_policy(policy)

    @property
    def maximize(self) -> bool:
        return self.direction is Direction.MAXIMIZE

    def settings(self) -> dict[str, Any]:
        """JSON-friendly settings recorded with the experiment."""
        return {
            "epochs": self.epochs,
            "metric": self.metric,
            "direction": self.direction.value,
            "seed": self.seed,
            "policy": self.policy.value,
        }

    @abstractmethod
    def propose(self) -> list[dict[str, Any]]:
        """The parameter dicts of the MSTs to start with."""

    def on_epoch_end(self, mst: MST, epoch: int, metrics: Mapping[str, float]) -> Decision:
        """Called when an MST's epoch is evaluated; the default trains every epoch."""
        return Decision.CONTINUE

    def make_mst(self, mst_id: int, params: Mapping[str, Any], parent: int | None = None) -> MST:
        return MST(mst_id, dict(params), derive_seed(self.seed, mst_id), parent)

    def fit(
        self,
        data: Dataset,
        *,
        n_workers: int = 2,
        executor: BaseExecutor | None = None,
        run_name: str | None = None,
        store: str | BaseStore | None = None,
        run_dir: str | os.PathLike | None = None,
        progress: bool = False,
        keep_shards: bool = False,
        checkpoints: str = "latest+best",
    ) -> Result:
        """Train the proposed MSTs on ``n_workers`` workers with MOP and return the result.

        The run is recorded in ``store`` (a SQLAlchemy URL; default a SQLite file
        under ./modelhopper-runs/) under ``run_name``; its shards and checkpoints go
        to ``run_dir`` (default ./modelhopper-runs/<run_name>). ``checkpoints`` is
        'latest+best', 'latest' or 'all'.
        """
        from modelhopper.experiment import run_search

        return run_search(
            self, data, n_workers=n_workers, executor=executor, run_name=run_name,
            store=store, run_dir=run_dir, progress=progress, keep_shards=keep_shards,
            checkpoints=checkpoints,
        )  # fmt: skip
