"""Population based training (Jaderberg et al., 2017), asynchronous, on MOP.

A population of ``population_size`` MSTs trains for ``epochs`` epochs each. Every
``interval`` epochs a member reaches a boundary; if it ranks in the bottom
``quantile`` of the members that have reported at that boundary, it is replaced
(exploit and explore): it stops, and a new MST is added with a top-quantile member as
``parent``, warm-started from the parent's latest weights, with the parent's params
perturbed and the epochs the replaced member had left.

Every MST gets its whole budget up front (a child: the epochs left), so the MOP
scheduler sees the true remaining work, and an MST's place in the schedule is read
from the trainer: it inherited ``epochs - budget`` epochs, and after its own epoch e
it stands at ``epochs - budget + e + 1``. Nothing else is kept, so a resumed run
decides as the uninterrupted one would.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np

from modelhopper._checks import check_int
from modelhopper._vocabulary import MSTStatus
from modelhopper.errors import ConfigError
from modelhopper.estimator import Estimator
from modelhopper.procedures._base import (
    BaseProcedure,
    Decision,
    EpochResult,
    Trainer,
)
from modelhopper.space import (
    BaseDomain,
    Choice,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    Space,
    Uniform,
)

__all__ = ["PBT"]


def _check_fraction(name: str, value: object, low: float, high: float, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}; {example}")
    return float(value)


class PBT(BaseProcedure):
    """Population based training: replace the bottom quantile by perturbed copies of the top.

    Explore: with probability ``resample_probability`` a parameter is drawn afresh from its
    domain; otherwise a float (uniform, loguniform, quniform) is multiplied by one of
    ``perturbation_factors`` and clipped into its bounds (quniform: rounded to a multiple
    of q), an int (randint) likewise but moved by at least 1, and a choice/grid value moves
    to a neighbour in its list (either side at random; from an end, inward). Constants are
    kept. A member is judged against the members that have reported at the same boundary
    so far (asynchronous: the first to arrive are rarely cut), and the parent is drawn
    among the top quantile of those. The randomness of replacing
    MST m comes from ``numpy.random.default_rng([seed, 2, m])``, so a run is a function of
    the seed and the results. Failed members are not replaced; the population shrinks.
    """

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        population_size: int,
        epochs: int,
        interval: int,
        quantile: float = 0.25,
        perturbation_factors: Sequence[float] = (0.8, 1.2),
        resample_probability: float = 0.25,
        mutable: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(make_estimator, space, epochs=epochs, **kwargs)
        # Clones start from their parent's weights, so architecture params must not move:
        # ``mutable`` names the hyperparameters PBT may perturb (default: every domain).
        names = self.space.names if mutable is None else tuple(mutable)
        unknown = [n for n in names if n not in self.space]
        if unknown or not names:
            raise ConfigError(
                f"mutable must name parameters of the space, got {mutable!r}; the space has "
                f"{list(self.space.names)} (list the hyperparameters, e.g. mutable=['lr'])"
            )
        self.mutable = names
        self.population_size = check_int(
            "population_size", population_size, example="population_size=8"
        )
        self.interval = check_int("interval", interval, example="interval=2")
        if self.interval >= self.epochs:
            raise ConfigError(
                f"interval < epochs must hold so members meet at a boundary, got "
                f"interval={interval}, epochs={epochs}; lower interval (or use RandomSearch)"
            )
        self.quantile = _check_fraction("quantile", quantile, 0.0, 0.5, "e.g. quantile=0.25")
        if self.quantile * self.population_size < 1:
            raise ConfigError(
                f"population_size * quantile >= 1 must hold so a member can be replaced, got "
                f"population_size={population_size}, quantile={quantile}; grow the population "
                "or raise quantile"
            )
        factors = tuple(perturbation_factors) if isinstance(perturbation_factors, Sequence) else ()
        if not factors or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f > 0
            for f in factors
        ):
            raise ConfigError(
                "perturbation_factors must be a non-empty sequence of numbers > 0, got "
                f"{perturbation_factors!r}; e.g. perturbation_factors=(0.8, 1.2)"
            )
        self.perturbation_factors = tuple(float(f) for f in factors)
        self.resample_probability = _check_fraction(
            "resample_probability", resample_probability, 0.0, 1.0, "e.g. 0.25"
        )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "population_size": self.population_size,
            "interval": self.interval,
            "quantile": self.quantile,
            "perturbation_factors": list(self.perturbation_factors),
            "resample_probability": self.resample_probability,
        }

    def on_start(self, trainer: Trainer) -> None:
        if trainer.msts():  # a resumed run: the population is there already
            return
        rng = np.random.default_rng([self.seed, 1])  # RandomSearch's points, in order
        for _ in range(self.population_size):
            trainer.add(self.space.sample(rng), epochs=self.epochs)

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> Decision:
        position = self._offset(trainer, result.mst_id) + result.epoch + 1
        if position % self.interval or position >= self.epochs:
            return Decision.CONTINUE
        reports = self._reports_at(trainer, position)
        ranked = self.rank(list(reports.items()))
        n_cut = math.floor(len(ranked) * self.quantile)
        if n_cut == 0 or result.mst_id not in ranked[len(ranked) - n_cut :]:
            return Decision.CONTINUE
        parents = [
            m for m in ranked[:n_cut]
            if trainer.status(m) is not MSTStatus.FAILED and self.feasible(reports[m])
        ]  # fmt: skip
        if not parents:
            return Decision.CONTINUE
        rng = np.random.default_rng([self.seed, 2, result.mst_id])
        parent = parents[int(rng.integers(len(parents)))]
        params = self.explore(self._params(trainer, parent), rng)
        trainer.add(params, epochs=self.epochs - position, parent=parent, warm_start=True)
        return Decision.STOP

    def explore(self, params: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """``params`` perturbed as the class docstring says, checked against the space."""
        new = dict(params)
        for name, domain in self.space.domains.items():
            if isinstance(domain, BaseDomain) and name in self.mutable:
                if rng.random() < self.resample_probability:
                    new[name] = domain.sample(rng)
                else:
                    new[name] = self._perturb(domain, params[name], rng)
        return self.space.validate_point(new)

    def _perturb(self, domain: BaseDomain, value: Any, rng: np.random.Generator) -> Any:
        if isinstance(domain, (Choice, Grid)):
            found = [
                i for i, v in enumerate(domain.values) if type(v) is type(value) and v == value
            ]
            if not found or len(domain.values) == 1:
                return domain.sample(rng)
            index, last = found[0], len(domain.values) - 1
            step = 1 if index == 0 else -1 if index == last else 1 if rng.random() < 0.5 else -1
            return copy.deepcopy(domain.values[index + step])
        factor = self.perturbation_factors[int(rng.integers(len(self.perturbation_factors)))]
        if isinstance(domain, RandInt):
            moved = round(value * factor)
            if moved == value and factor != 1:
                moved = value + (1 if factor > 1 else -1)
            return int(min(max(moved, domain.low), domain.high - 1))
        if isinstance(domain, QUniform):
            steps = round(value * factor / domain.q)
            moved = float(Decimal(steps) * Decimal(repr(domain.q)))
            return min(max(moved, domain.low), domain.high)
        if isinstance(domain, (Uniform, LogUniform)):
            return min(max(float(value) * factor, domain.low), domain.high)
        raise ConfigError(f"PBT cannot perturb a {type(domain).__name__} domain")

    # ------------------------------------------------------------ reading the trainer

    def _offset(self, trainer: Trainer, mst_id: int) -> int:
        """Epochs the MST inherited: its budget is what its lineage had left."""
        return max(0, self.epochs - trainer.budget(mst_id))

    def _reports_at(self, trainer: Trainer, position: int) -> dict[int, Mapping[str, float]]:
        """The metrics of the MSTs that reported at ``position`` epochs, by MST id."""
        offsets = {m.id: self._offset(trainer, m.id) for m in trainer.msts()}
        reports: dict[int, Mapping[str, float]] = {}
        for r in trainer.results():
            if offsets[r.mst_id] + r.epoch + 1 == position:
                reports[r.mst_id] = r.metrics
        return reports

    def _params(self, trainer: Trainer, mst_id: int) -> dict[str, Any]:
        return dict(next(m.params for m in trainer.msts() if m.id == mst_id))
