"""BOHB's own proposals for successive halving: kernel density estimates with no prior.

``ASHA(..., sampler="kde")`` and ``Hyperband(..., sampler="kde")`` propose each new MST
as BOHB (Falkner et al., 2018) does. At the highest rung with enough reports (more
than the number of hyperparameters d in both groups, at least d + 3 in all), the
reports are split into the best 15 % (at least d + 1: the "good" ones) and the rest;
a kernel density estimate of each (statsmodels' ``KDEMultivariate``, normal-reference
bandwidths; a choice is its index, with the ordered kernel) is fitted over the space
mapped to the unit cube; 64 candidates are drawn
around good points (continuous values from a normal truncated to the cube, its width
the good density's bandwidth times 3; choices kept with probability 1 - bandwidth),
and the one with the smallest bad / good density ratio is proposed. With probability
``random_fraction`` (1/3), or while no rung has enough reports, the proposal is the
procedure's random point, which keeps exploring.

Why not Optuna's TPE (``sampler="tpe"``): Optuna's densities always include a prior
over the whole space. When a rung's reports are all good ones (few MSTs reached it),
the ratio then favours corners no MST has tried, and the proposals leave the best
region (BENCHMARKS.md, "The TPE-in-ASHA gap"); BOHB's densities have no prior.

Only MSTs that reached the chosen rung are modelled, with their metric there (a NaN or
missing value counts as the worst). Nothing is kept between proposals, and draws are
seeded by (procedure seed, MST number), so a resumed run proposes what the
uninterrupted one would. One objective only; constraints are honoured by promotion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelhopper._domains import BaseDomain, Choice, Grid, LogUniform, QUniform, RandInt, Uniform
from modelhopper.errors import ConfigError
from modelhopper.estimator import derive_seed
from modelhopper.space import Space

__all__ = ["kde_point", "check_kde_objectives"]

GOOD_PERCENT = 15  # BOHB's top_n_percent
BANDWIDTH_FACTOR = 3.0  # candidates spread wider than the good density (BOHB's default)
MIN_BANDWIDTH = 1e-3
N_CANDIDATES = 64


def check_kde_objectives(objectives: Mapping[str, Any]) -> None:
    """``sampler="kde"`` models one metric; refuse several now, not at the first proposal."""
    if len(objectives) != 1:
        raise ConfigError(
            f"sampler='kde' models one objective, got {len(objectives)} ({list(objectives)}); "
            "use sampler='tpe' for several objectives"
        )
    _import_kde()


def _import_kde() -> Any:
    try:
        from statsmodels.nonparametric.kernel_density import KDEMultivariate
    except ImportError as e:
        raise ConfigError("sampler='kde' needs statsmodels: pip install 'modelhopper[bohb]'") from e
    return KDEMultivariate


class _UnitCube:
    """The space's searchable hyperparameters as points of [0, 1]^d (choices: their index)."""

    def __init__(self, space: Space) -> None:
        kinds = (Choice, Grid, LogUniform, Uniform, RandInt, QUniform)
        self.dims = [(n, d) for n, d in space.domains.items() if isinstance(d, kinds)]
        searched = dict(self.dims)
        self.constants = {n: d for n, d in space.domains.items() if n not in searched}
        # statsmodels' variable types: continuous, or a choice's index as an ordered one:
        # its unordered kernel counts the levels present in the data, which is undefined
        # (a division by zero) when every good point shares one choice
        self.var_type = "".join("o" if _is_choice(d) else "c" for _, d in self.dims)
        self.levels = [len(d.values) if isinstance(d, (Choice, Grid)) else 0 for _, d in self.dims]

    def encode(self, params: Mapping[str, Any]) -> np.ndarray | None:
        """The point of an MST's params; None if it is not one of the space's points."""
        out = []
        for name, domain in self.dims:
            if name not in params:
                return None
            value = _to_unit(domain, params[name])
            if value is None:
                return None
            out.append(value)
        return np.array(out, dtype=np.float64)

    def decode(self, point: np.ndarray) -> dict[str, Any]:
        params = {
            name: _from_unit(domain, float(x))
            for (name, domain), x in zip(self.dims, point, strict=True)
        }
        return {**params, **self.constants}


def _is_choice(domain: BaseDomain) -> bool:
    return isinstance(domain, (Choice, Grid))


def _to_unit(domain: BaseDomain, value: Any) -> float | None:
    if isinstance(domain, (Choice, Grid)):
        hits = [i for i, v in enumerate(domain.values) if v == value]
        return float(hits[0]) if hits else None
    if isinstance(domain, LogUniform):
        span = math.log(domain.high) - math.log(domain.low)
        return _clip((math.log(value) - math.log(domain.low)) / span)
    if isinstance(domain, RandInt):  # integer k owns [k, k + 1) of [low, high)
        return _clip((value - domain.low + 0.5) / (domain.high - domain.low))
    assert isinstance(domain, (Uniform, QUniform))
    return _clip((value - domain.low) / (domain.high - domain.low))


def _from_unit(domain: BaseDomain, x: float) -> Any:
    if isinstance(domain, (Choice, Grid)):
        return domain.values[min(len(domain.values) - 1, max(0, round(x)))]
    if isinstance(domain, LogUniform):
        span = math.log(domain.high) - math.log(domain.low)
        return float(math.exp(math.log(domain.low) + x * span))
    if isinstance(domain, RandInt):
        return int(min(domain.high - 1, domain.low + math.floor(x * (domain.high - domain.low))))
    if isinstance(domain, QUniform):
        value = round((domain.low + x * (domain.high - domain.low)) / domain.q) * domain.q
        return float(min(domain.high, max(domain.low, value)))
    assert isinstance(domain, Uniform)
    return float(domain.low + x * (domain.high - domain.low))


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def kde_point(
    *,
    space: Space,
    objectives: Mapping[str, Any],
    seed: int,
    index: int,
    rungs: Sequence[int],
    reports: Sequence[tuple[dict[str, Any], Mapping[int, Mapping[str, float]]]],
) -> dict[str, Any] | None:
    """BOHB's proposal for the run's MST number ``index``, or None while no rung has
    enough reports.

    ``reports``: (params, metrics by epochs trained) of every MST so far, in id order.
    """
    ((metric, direction),) = objectives.items()
    cube = _UnitCube(space)
    if not cube.dims:
        return None
    sign = -1.0 if str(direction) == "maximize" else 1.0  # lower is better below
    for rung in sorted(rungs, reverse=True):
        split = _good_and_bad(cube, reports, rung, metric, sign)
        if split is not None:
            rng = np.random.default_rng(derive_seed(seed, 6, index))
            return cube.decode(_best_candidate(cube, *split, rng))
    return None


def _good_and_bad(
    cube: _UnitCube,
    reports: Sequence[tuple[dict[str, Any], Mapping[int, Mapping[str, float]]]],
    rung: int,
    metric: str,
    sign: float,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The rung's good and bad points (BOHB's split), or None if it has too few reports."""
    points: list[tuple[float, int, np.ndarray]] = []
    for params, by_epochs in reports:
        if rung not in by_epochs:
            continue
        point = cube.encode(params)
        if point is None:  # not a point of the space (a user's clone): not modelled
            continue
        value = by_epochs[rung].get(metric)
        loss = sign * float(value) if value is not None and math.isfinite(value) else math.inf
        points.append((loss, len(points), point))
    d = len(cube.dims)
    if len(points) < d + 3:
        return None
    points.sort(key=lambda p: (p[0], p[1]))  # ties: the earlier MST first
    n_good = max(d + 1, GOOD_PERCENT * len(points) // 100)
    good = np.array([p for _, _, p in points[:n_good]])
    bad = np.array([p for _, _, p in points[n_good:]])
    if len(good) <= d or len(bad) <= d:  # a density needs more points than dimensions
        return None
    return good, bad


def _best_candidate(
    cube: _UnitCube, good: np.ndarray, bad: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Of N_CANDIDATES drawn around good points, the one least likely bad per likely good."""
    kde = _import_kde()
    # rng: unused by the normal-reference bandwidths; given, as statsmodels 0.15 asks
    good_density = kde(good, var_type=cube.var_type, bw="normal_reference", rng=0)
    bad_density = kde(bad, var_type=cube.var_type, bw="normal_reference", rng=0)
    bandwidth = _bandwidths(good_density.bw, cube.var_type)
    good_density.bw = bandwidth
    bad_density.bw = _bandwidths(bad_density.bw, cube.var_type)
    candidates = _candidates(cube, good, bandwidth, rng)
    # fmax: a NaN density counts as the floor; a NaN or infinite ratio never wins
    ratios = np.fmax(1e-32, bad_density.pdf(candidates)) / np.fmax(
        1e-32, good_density.pdf(candidates)
    )
    usable = np.flatnonzero(ratios < np.inf)
    if not len(usable):
        return good[0]
    return candidates[usable[np.argmin(ratios[usable])]]  # ties: the first drawn


def _candidates(
    cube: _UnitCube, good: np.ndarray, bandwidth: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """N_CANDIDATES points drawn around good points: each continuous value from a normal
    truncated to [0, 1] (by inversion of one uniform draw, as scipy's ``truncnorm.rvs``
    draws it, but for all candidates in one call), each choice moved with probability
    its bandwidth. The draws are taken from ``rng`` candidate by candidate."""
    from scipy import stats

    rows, uniforms = [], []
    for _ in range(N_CANDIDATES):
        candidate = good[rng.integers(len(good))].copy()
        draws = np.full(len(candidate), np.nan)
        for m, kind in enumerate(cube.var_type):
            if kind == "c":
                draws[m] = rng.uniform()
            elif rng.random() < bandwidth[m]:  # a choice: another one, at random
                candidate[m] = rng.integers(cube.levels[m])
        rows.append(candidate)
        uniforms.append(draws)
    candidates = np.array(rows)
    continuous = np.array([kind == "c" for kind in cube.var_type])
    if continuous.any():
        centres = candidates[:, continuous]
        width = bandwidth[continuous] * BANDWIDTH_FACTOR
        low, high = -centres / width, (1.0 - centres) / width
        q = np.array(uniforms)[:, continuous]
        candidates[:, continuous] = stats.truncnorm.ppf(q, low, high, loc=centres, scale=width)
    return candidates


def _bandwidths(raw: np.ndarray, var_type: str) -> np.ndarray:
    """Bandwidths kept usable: at least MIN_BANDWIDTH (identical points give 0) and, for
    a choice, at most 1 (it is the probability of another choice)."""
    out = np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=1.0)
    out = np.maximum(out, MIN_BANDWIDTH)
    return np.array(
        [min(b, 1.0) if kind == "o" else b for b, kind in zip(out, var_type, strict=True)]
    )
