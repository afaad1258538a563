"""The procedure interface: procedures decide which MSTs to train; they never run them.

A procedure acts through a ``Trainer`` (the running experiment's narrow view:
add an MST, raise its epoch budget, stop it, read results) from three hooks:
``on_start`` (before anything runs), ``on_epoch_end`` (each time an MST's epoch
is evaluated) and ``on_idle`` (a worker has nothing to run: add MSTs or
promote paused ones, so workers never wait on a rung to fill). Procedures keep
no history of their own: they read it from the trainer, so a resumed run
continues with the same decisions. Tests drive them with a fake trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from modelhopper._checks import check_int
from modelhopper._pareto import (
    Constraint,
    Objectives,
    check_objectives,
    pareto_ranked,
    ranks_within,
)
from modelhopper._ranking import DEFAULT_DIRECTION, score
from modelhopper._vocabulary import MST, Decision, Direction, EpochResult, Trainer
from modelhopper.errors import ConfigError, SpaceError
from modelhopper.estimator import Estimator, derive_seed
from modelhopper.scheduling import (
    Hybrid,
    SchedulingPolicy,
    TrainOrder,
    _parse_policy,
    parse_hybrid,
    parse_train_order,
)
from modelhopper.space import Space

if TYPE_CHECKING:
    from modelhopper.data import Dataset
    from modelhopper.experiment import RunOptions
    from modelhopper.handle import RunHandle
    from modelhopper.result import Result

__all__ = ["MST", "Decision", "Direction", "EpochResult", "Trainer", "BaseProcedure"]


def _objectives(
    metric: str | None,
    direction: Direction | str | None,
    objectives: Mapping[str, Direction | str] | None,
) -> Objectives:
    """The objectives, from ``objectives`` or from ``metric`` and ``direction``."""
    if objectives is not None:
        if metric is not None or direction is not None:
            raise ConfigError(
                "give metric= and direction=, or objectives= (several metrics), not both; "
                f"got metric={metric!r}, direction={direction!r}, objectives={objectives!r}"
            )
        try:
            return check_objectives(objectives)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    metric = "val_loss" if metric is None else metric
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"metric must be a metric name such as 'val_loss', got {metric!r}")
    try:
        return {metric: Direction(DEFAULT_DIRECTION if direction is None else direction)}
    except ValueError:
        raise ConfigError(
            f"direction must be 'maximize' or 'minimize', got {direction!r}"
        ) from None


def _sequence(constraints: object) -> Sequence[object]:
    if isinstance(constraints, str):
        return (constraints,)  # one constraint, not its characters
    if not isinstance(constraints, Sequence):
        raise ConfigError(
            f"constraints must be a list of 'metric <= number' strings, got {constraints!r}"
        )
    return constraints


class BaseProcedure:
    """Proposes MSTs and judges each epoch's result; the experiment runs them on MOP."""

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        epochs: int,
        metric: str | None = None,
        direction: Direction | str | None = None,
        objectives: Mapping[str, Direction | str] | None = None,
        constraints: Sequence[str] = (),
        seed: int = 0,
        policy: SchedulingPolicy | str = SchedulingPolicy.LONGEST_REMAINING,
        train_order: TrainOrder | str = TrainOrder.FIXED,
        hybrid: Hybrid | str = Hybrid.OFF,
    ) -> None:
        """``metric`` (default 'val_loss') and ``direction`` (default 'minimize') name what
        to optimise; or ``objectives`` names several metrics with their directions (MSTs
        are then ranked by Pareto front, ``modelhopper._pareto``; the first objective is
        the run's ``metric``). ``constraints`` ('val_n_params <= 100000') make MSTs whose
        metrics break them rank below every feasible MST. ``train_order``: "fixed"
        (default) draws each epoch's shard order from the seed, so results do not depend
        on timing; "any" trains on whichever not-yet-visited shard's worker is free first
        (fewer waits with one copy of the data on many workers; results then depend on
        timing, and each step records the shard it ran on). ``hybrid``: "off" (default,
        MOP only), "auto" (an epoch trains data-parallel on every worker when fewer MSTs
        can run than half the workers, while that is measured to pay) or "on"
        (every epoch); see docs/hybrid.md."""
        if not callable(make_estimator):
            raise ConfigError(
                f"make_estimator must be a function params -> Estimator, got {make_estimator!r}"
            )
        self.make_estimator = make_estimator
        self.space = space if isinstance(space, Space) else Space(space)
        if not len(self.space):
            raise SpaceError(
                "the space is empty: it names no parameter, so there is no MST to train; "
                "give at least one, e.g. {'lr': mh.loguniform(1e-4, 1e-1)}, or a constant "
                "such as {'hidden': 64} for a single MST"
            )
        self.epochs = check_int("epochs", epochs, example="epochs=5")
        self.objectives = _objectives(metric, direction, objectives)
        self.metric, self.direction = next(iter(self.objectives.items()))
        try:
            self.constraints = tuple(Constraint.parse(c) for c in _sequence(constraints))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.seed = check_int("seed", seed, minimum=0)
        self.policy = _parse_policy(policy)
        self.train_order = parse_train_order(train_order)
        self.hybrid = parse_hybrid(hybrid)

    @property
    def maximize(self) -> bool:
        return self.direction is Direction.MAXIMIZE

    def settings(self) -> dict[str, Any]:
        """JSON-friendly settings recorded with the experiment."""
        return {
            "epochs": self.epochs,
            "metric": self.metric,
            "direction": self.direction.value,
            "objectives": {name: d.value for name, d in self.objectives.items()},
            "constraints": [str(c) for c in self.constraints],
            "seed": self.seed,
            "policy": self.policy.value,
            "train_order": self.train_order.value,
            "hybrid": self.hybrid.value,
        }

    def propose(self) -> list[dict[str, Any]]:
        """The parameter dicts of the MSTs to start with (grid and random search)."""
        return []

    def on_start(self, trainer: Trainer) -> None:
        """Add the first MSTs; by default those of ``propose()``, each for ``epochs`` epochs.

        A resumed run calls ``on_start`` again with its MSTs already in the trainer.
        """
        if trainer.msts():
            return
        for params in self.propose():
            trainer.add(params, epochs=self.epochs)

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> Decision:
        """Called when an MST's epoch is evaluated; the default trains every epoch."""
        return Decision.CONTINUE

    def decides_on_epochs(self) -> bool:
        """Whether ``on_epoch_end`` may stop an MST (it is overridden): if not, an MST's
        next epoch need not wait until the last one's metrics are recorded."""
        return type(self).on_epoch_end is not BaseProcedure.on_epoch_end

    def on_idle(self, trainer: Trainer, n_idle: int) -> None:
        """``n_idle`` workers have nothing to run; add or promote MSTs to feed them."""
        return None

    def objective(self, metrics: Mapping[str, float]) -> float:
        """The metric as a value to maximise (NaN-safe: a missing or NaN value is -inf)."""
        return score(metrics.get(self.metric), self.direction)

    def required_metrics(self) -> list[str]:
        """Every metric it ranks or constrains by: the run must report each."""
        return list(dict.fromkeys([*self.objectives, *(c.metric for c in self.constraints)]))

    def rank(self, reports: Sequence[tuple[int, Mapping[str, float]]]) -> list[int]:
        """MST ids of ``reports`` ((id, metrics) pairs), best first: by the one objective,
        or by Pareto front and crowding (several objectives); infeasible ones last."""
        order = pareto_ranked(
            reports, lambda r: r[1], lambda r: r[0], self.objectives, self.constraints
        )
        return [mst_id for mst_id, _ in order]

    def in_top(
        self, reports: Sequence[tuple[int, Mapping[str, float]]], mst_id: int, k: int
    ) -> bool:
        """Whether ``mst_id`` (one of ``reports``) is among the first ``k`` of
        ``rank(reports)``, without ranking them all when one objective decides."""
        if type(self).rank is not BaseProcedure.rank:  # a subclass's own order decides
            return mst_id in self.rank(reports)[:k]
        target = next(r for r in reports if r[0] == mst_id)
        return ranks_within(
            reports, target, k, lambda r: r[1], lambda r: r[0], self.objectives, self.constraints
        )

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        """Whether these metrics meet every constraint (an infeasible MST is never
        promoted)."""
        return all(c.violation(metrics) == 0 for c in self.constraints)

    def make_mst(self, mst_id: int, params: Mapping[str, Any], parent: int | None = None) -> MST:
        return MST(mst_id, dict(params), derive_seed(self.seed, mst_id), parent)

    def fit(self, data: Dataset, **options: Unpack[RunOptions]) -> Result:
        """Train the proposed MSTs on ``n_workers`` workers with MOP and return the result.

        The options (keywords; ``modelhopper.experiment.RunOptions``): ``n_workers``
        (default 2); ``executor``: 'local' (default: worker processes on this
        machine), 'ray' (a Ray instance, or the cluster this process joined with
        ``ray.init``), or an executor such as ``RayExecutor(address="auto")``;
        ``run_name`` (1 to 100 letters, digits, '.', '_' or '-'; default: generated);
        ``store`` (a SQLAlchemy URL or a store; default a SQLite file under
        ./modelhopper-runs/); ``run_dir`` for shards and checkpoints (default
        ./modelhopper-runs/<run_name>); ``progress`` (a progress bar); ``keep_shards``;
        ``checkpoints``: 'latest+best' (default), 'latest' or 'all'.
        """
        from modelhopper.experiment import check_options, run_search

        return run_search(self, data, **check_options(options, "fit"))

    def start(self, data: Dataset, **options: Unpack[RunOptions]) -> RunHandle:
        """Start the run in the background and return a handle to watch and steer it.

        Takes the options of ``fit``; the run is in the store when this returns.
        """
        from modelhopper.experiment import DEFAULT_ROOT, check_options, new_run_name, run_search
        from modelhopper.handle import RunHandle
        from modelhopper.store import BaseStore, open_store

        options = check_options(options, "start")
        run_name, store = options.get("run_name"), options.get("store")
        name = new_run_name(self) if run_name is None else run_name
        db = store if isinstance(store, BaseStore) else open_store(store, root=DEFAULT_ROOT)
        chosen: RunOptions = {**options, "run_name": name, "store": db}
        return RunHandle(name, db, lambda: run_search(self, data, **chosen))
