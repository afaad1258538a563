"""Model-based proposals for successive halving (BOHB-style: TPE inside the brackets).

``ASHA(..., sampler="tpe")`` and ``Hyperband(..., sampler="tpe")`` propose each new MST
from Optuna's TPE sampler instead of at random, as BOHB (Falkner et al., 2018) does
with its kernel density estimator: the model is fitted on the reports at the
**highest rung that has at least ``n_min`` of them** (n_min = the number of
hyperparameters + 1, BOHB's rule), told through Optuna's ask-and-tell, with the MSTs
stopped below that rung told as pruned trials (worse than every complete one); with
probability ``random_fraction`` (BOHB's default 1/3), or while no rung has enough
reports, the proposal is the procedure's random point instead, which keeps
exploring.

Nothing is kept between proposals: the study is rebuilt from the trainer's results
each time, and the sampler is seeded by (procedure seed, MST number), so a resumed
run proposes exactly what the uninterrupted one would. Several objectives are told
as such (TPE models them jointly); constraints are honoured by promotion, not
modelled here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelhopper.estimator import derive_seed
from modelhopper.procedures._optuna import _Codec, _finite, _import_optuna, _quiet
from modelhopper.space import Space

__all__ = ["SAMPLERS", "model_turn", "tpe_point"]

SAMPLERS = ("random", "kde", "tpe")
RANDOM_FRACTION = 1 / 3  # BOHB's default share of random proposals


def model_turn(seed: int, index: int, random_fraction: float = RANDOM_FRACTION) -> bool:
    """Whether the run's MST number ``index`` is a model's proposal rather than a random
    point: one seeded draw, the same for every sampler, so the same MSTs are random."""
    return bool(np.random.default_rng([seed, 4, index]).random() >= random_fraction)


def tpe_point(
    *,
    space: Space,
    objectives: Mapping[str, Any],
    seed: int,
    index: int,
    rungs: Sequence[int],
    reports: Sequence[tuple[dict[str, Any], Mapping[int, Mapping[str, float]]]],
) -> dict[str, Any] | None:
    """TPE's proposal for the run's MST number ``index``, or None while no rung has enough
    reports.

    ``reports``: (params, metrics by epochs trained) of every MST so far, in id order.
    The MSTs that reached the chosen rung are complete trials with their metrics there;
    those stopped below it are pruned trials with their last rung's value, which TPE
    ranks below every complete one (as Optuna's own pruners leave them): without them
    the model would see only promoted, similar MSTs and steer away from them.
    """
    optuna = _import_optuna()
    codec = _Codec(space, optuna)
    n_min = len(codec.distributions) + 1
    for rung in sorted(rungs, reverse=True):
        if sum(rung in by_epochs for _, by_epochs in reports) >= n_min:
            return _ask(
                optuna, codec, objectives, reports, rung, rungs, derive_seed(seed, 5, index)
            )
    return None


def _values(objectives: Mapping[str, Any], metrics: Mapping[str, float]) -> list[float] | None:
    values = [metrics.get(name) for name in objectives]
    return [float(v) for v in values] if all(_finite(v) for v in values) else None  # type: ignore[arg-type]


def _ask(
    optuna: Any,
    codec: _Codec,
    objectives: Mapping[str, Any],
    reports: Sequence[tuple[dict[str, Any], Mapping[int, Mapping[str, float]]]],
    rung: int,
    rungs: Sequence[int],
    seed: int,
) -> dict[str, Any]:
    state = optuna.trial.TrialState
    n_min = len(codec.distributions) + 1
    sampler = optuna.samplers.TPESampler(seed=seed % 2**32, n_startup_trials=n_min)
    with _quiet(optuna):
        study = optuna.create_study(
            directions=[str(direction) for direction in objectives.values()], sampler=sampler
        )
        for params, by_epochs in reports:
            encoded = codec.encode(params)  # None: not a point of the space (a user's clone)
            if encoded is None:
                continue
            if rung in by_epochs:
                values = _values(objectives, by_epochs[rung])
                trial = optuna.trial.create_trial(
                    params=encoded, distributions=codec.distributions, values=values,
                    state=state.COMPLETE if values is not None else state.FAIL,
                )  # fmt: skip
            else:
                reached = [r for r in rungs if r < rung and r in by_epochs]
                last = _values(objectives, by_epochs[max(reached)]) if reached else None
                if len(objectives) > 1 or last is None:
                    continue  # several objectives: TPE orders no pruned trials; skip them
                trial = optuna.trial.create_trial(
                    params=encoded, distributions=codec.distributions, state=state.PRUNED,
                    intermediate_values={max(reached): last[0]},
                )  # fmt: skip
            study.add_trial(trial)
        trial = study.ask(codec.distributions)
    return codec.decode(trial.params)
