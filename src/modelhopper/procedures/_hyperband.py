"""Successive halving on MOP: ``ASHA``, asynchronous ``Hyperband`` and synchronous
``SuccessiveHalving``.

An MST climbs rungs r_k = min_epochs * reduction_factor**k, capped at max_epochs
(``rungs(1, 10, 3) == (1, 3, 9, 10)``). Its budget is one rung's epochs; when it has
trained them it pauses (its budget is done, so the trainer marks it completed) until
the procedure promotes it with ``trainer.extend(mst, next_rung)``. Reports, ranks and
promotions are read from the trainer's results, budgets and statuses; the one thing
kept between hooks, the read of the results so far (``_Reports``), is read again whole
when the trainer's list is not the one it read, so a resumed run decides as the
uninterrupted one would.

New MSTs are random points of the space: the j-th MST of a run is the j-th point that
``RandomSearch`` with the same space and seed proposes, so procedures compare on the
same candidates.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelhopper._checks import check_int
from modelhopper._vocabulary import MSTStatus
from modelhopper.errors import ConfigError
from modelhopper.estimator import Estimator
from modelhopper.procedures._base import (
    MST,
    BaseProcedure,
    Decision,
    EpochResult,
    Trainer,
)
from modelhopper.procedures._bohb import SAMPLERS, model_turn, tpe_point
from modelhopper.procedures._kde import check_kde_objectives, kde_point
from modelhopper.procedures._optuna import _import_optuna
from modelhopper.scheduling import SchedulingPolicy
from modelhopper.space import Space

__all__ = ["ASHA", "Hyperband", "SuccessiveHalving", "rungs"]


def rungs(min_epochs: int, max_epochs: int, reduction_factor: int) -> tuple[int, ...]:
    """The rung epochs min_epochs * reduction_factor**k below max_epochs, then max_epochs."""
    out = []
    epochs = min_epochs
    while epochs < max_epochs:
        out.append(epochs)
        epochs *= reduction_factor
    return (*out, max_epochs)


class _Asked(dict[int, Any]):
    """The trainer's answer for an MST id, asked the first time it is read."""

    def __init__(self, ask: Callable[[int], Any]) -> None:
        super().__init__()
        self._ask = ask

    def __missing__(self, mst_id: int) -> Any:
        self[mst_id] = answer = self._ask(mst_id)
        return answer


class _Reports:
    """Metrics by MST id and epoch of a trainer's results, read incrementally: each read
    takes only the results evaluated since the last one (a decision used to rebuild it
    from every result of the run, which grew with the run). The whole list is read again
    when it is not the one read before (another trainer, a resumed run, results taken
    back): its last-read result must be the same object at the same place. It also keeps
    the reports by epoch and each MST's place in ``trainer.msts()``, so that a rung's
    decision reads that rung's reports, not every MST of the run."""

    def __init__(self) -> None:
        self._read = 0
        self.generation = 0  # counts whole re-reads: state built on a read knows it is stale
        self._last: EpochResult | None = None
        self._metrics: dict[int, dict[int, Mapping[str, float]]] = {}
        self._by_epoch: dict[int, dict[int, Mapping[str, float]]] = {}
        self._places: dict[int, int] = {}

    def of(self, trainer: Trainer, msts: list[MST]) -> dict[int, dict[int, Mapping[str, float]]]:
        results = trainer.results()
        if not self._read or len(results) < self._read or results[self._read - 1] is not self._last:
            self._read, self._metrics, self._by_epoch, self._places = 0, {}, {}, {}
            self.generation += 1
        for r in results[self._read :]:
            self._metrics.setdefault(r.mst_id, {})[r.epoch] = r.metrics  # a re-evaluation replaces
            self._by_epoch.setdefault(r.epoch, {})[r.mst_id] = r.metrics
        self._read, self._last = len(results), results[-1] if results else None
        self._place(msts)
        return self._metrics

    def _place(self, msts: list[MST]) -> None:
        """Index ``msts`` (id order, new ones last) and give each its metrics entry: only
        the new ones, or all again if it is not the list indexed before, grown at its end."""
        known = len(self._places)
        if known > len(msts) or (known and self._places.get(msts[known - 1].id) != known - 1):
            self._places, known = {}, 0
        for place in range(known, len(msts)):
            self._places[msts[place].id] = place
            self._metrics.setdefault(msts[place].id, {})

    def place(self, mst_id: int) -> int:
        """The MST's position in ``trainer.msts()`` as last read."""
        return self._places[mst_id]

    def at(self, epoch: int) -> dict[int, Mapping[str, float]]:
        """Metrics by MST id of the MSTs that reported epoch ``epoch`` (0-based)."""
        return self._by_epoch.get(epoch, {})


@dataclass
class _View:
    """One read of the trainer: MSTs in id order with their metrics by epoch, budget, status."""

    msts: list[MST]
    metrics: dict[int, dict[int, Mapping[str, float]]]
    budget: Mapping[int, int]
    status: Mapping[int, MSTStatus]
    read: _Reports  # the incremental read behind it: reports by epoch, places

    @classmethod
    def of(cls, trainer: Trainer, reports: _Reports | None = None) -> _View:
        """The trainer now; ``reports``: the procedure's incremental read of its results."""
        msts = trainer.msts()
        reports = reports or _Reports()
        metrics = reports.of(trainer, msts)
        # Asked per MST when read: a decision reads the budgets of the few MSTs still
        # running, not of the thousands a long run has stopped.
        return cls(msts, metrics, _Asked(trainer.budget), _Asked(trainer.status), reports)

    def done(self, mst_id: int) -> int:
        """Epochs evaluated (its latest evaluated epoch + 1)."""
        epochs = self.metrics[mst_id]
        return max(epochs) + 1 if epochs else 0

    def n_active(self, active: list[int]) -> int:
        """Of the ``active`` MSTs (``trainer.active()``), those that still have epochs to
        train (they keep a worker busy or queued)."""
        return sum(self.done(m) < self.budget[m] for m in active)

    def ranked(
        self,
        members: list[int],
        epochs: int,
        rank: Callable[[list[tuple[int, Mapping[str, float]]]], list[int]],
    ) -> list[int]:
        """Members that reported after ``epochs`` epochs, best first by ``rank`` (the
        procedure's: one objective, or Pareto fronts; infeasible ones last)."""
        return rank([(m, self.metrics[m][epochs - 1]) for m in members
                     if epochs - 1 in self.metrics[m]])  # fmt: skip

    def reports(self) -> list[tuple[dict[str, Any], dict[int, Mapping[str, float]]]]:
        """(params, metrics by epochs trained) of every MST, by id."""
        return [(m.params, {e + 1: v for e, v in self.metrics[m.id].items()})
                for m in self.msts]  # fmt: skip

    def paused_at(self, mst_id: int, epochs: int) -> bool:
        """Trained exactly to a budget of ``epochs`` and neither stopped nor failed."""
        return (
            not self.status[mst_id].ended
            and self.budget[mst_id] == epochs
            and self.done(mst_id) >= epochs
        )


class _Halving(BaseProcedure):
    """Arguments, rungs and random points shared by the successive-halving procedures."""

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        max_epochs: int,
        n_msts: int,
        min_epochs: int = 1,
        reduction_factor: int = 3,
        sampler: str = "random",
        **kwargs: Any,
    ) -> None:
        max_epochs = check_int("max_epochs", max_epochs, example="max_epochs=27")
        if sampler not in SAMPLERS:
            raise ConfigError(
                f"sampler must be 'random' (random points), 'kde' (BOHB: kernel densities of "
                f"the highest rung with enough reports) or 'tpe' (BOHB-style, with Optuna's "
                f"TPE), got {sampler!r}"
            )
        if sampler == "tpe":
            _import_optuna()  # a missing extra is named now, not at the first proposal
        self.sampler = sampler
        super().__init__(make_estimator, space, epochs=max_epochs, **kwargs)
        if sampler == "kde":
            check_kde_objectives(self.objectives)
        self.max_epochs = max_epochs
        self.min_epochs = check_int("min_epochs", min_epochs, example="min_epochs=1")
        if min_epochs > max_epochs:
            raise ConfigError(
                f"min_epochs <= max_epochs must hold, got min_epochs={min_epochs}, "
                f"max_epochs={max_epochs}; lower min_epochs or raise max_epochs"
            )
        if (
            isinstance(reduction_factor, bool)
            or not isinstance(reduction_factor, int)
            or reduction_factor < 2
        ):
            raise ConfigError(
                "reduction_factor must be an integer >= 2 (a rung promotes its top "
                f"1/reduction_factor), got {reduction_factor!r}; e.g. reduction_factor=3"
            )
        self.reduction_factor = reduction_factor
        self.n_msts = check_int("n_msts", n_msts, example="n_msts=27")
        self.rungs = rungs(self.min_epochs, self.max_epochs, self.reduction_factor)
        self._points: list[dict[str, Any]] = []
        self._rng: np.random.Generator | None = None
        self._reports = _Reports()

    def _view(self, trainer: Trainer) -> _View:
        return _View.of(trainer, self._reports)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "min_epochs": self.min_epochs,
            "max_epochs": self.max_epochs,
            "reduction_factor": self.reduction_factor,
            "n_msts": self.n_msts,
            "sampler": self.sampler,
        }

    def _propose(self, index: int, view: _View) -> dict[str, Any]:
        """The run's MST number ``index``: the random point, or a model's proposal from
        the reports so far (``sampler="kde"``: ``_kde``; ``"tpe"``: ``_bohb``)."""
        if self.sampler != "random" and model_turn(self.seed, index):
            model = kde_point if self.sampler == "kde" else tpe_point
            proposed = model(
                space=self.space, objectives=self.objectives, seed=self.seed, index=index,
                rungs=self.rungs, reports=view.reports(),
            )  # fmt: skip
            if proposed is not None:
                return proposed
        return self._point(index)

    def _point(self, index: int) -> dict[str, Any]:
        """RandomSearch's point number ``index`` for this space and seed (memoised draws)."""
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, 1])
        while len(self._points) <= index:
            self._points.append(self.space.sample(self._rng))
        return copy.deepcopy(self._points[index])


MODES = ("promotion", "stopping")


class _AsyncHalving(_Halving):
    """ASHA over one or more brackets: promote when possible, else add, never wait.

    ``mode="stopping"``: an MST that reaches a rung goes straight on to the next one
    if it ranks in the top ceil(n_k / reduction_factor) of the n_k MSTs that reported at
    that rung so far (itself included: the first to arrive always goes on), and ends
    there otherwise; nothing is promoted later (the stopping ASHA of Ray Tune and Syne
    Tune, whose cut-offs differ slightly from this one: docs/procedures.md).
    The scheduling ``policy`` defaults to "oldest_first" here (see __init__).
    """

    brackets: tuple[tuple[int, ...], ...]

    def __init__(self, *args: Any, mode: str = "promotion", **kwargs: Any) -> None:
        # Oldest first, unless asked otherwise: MSTs then finish and reach their rungs
        # early, one after another; longest-remaining-work first kept dozens of MSTs in
        # flight at once and decided late (bench/anytime.py: regret 0.070 -> 0.057).
        kwargs.setdefault("policy", SchedulingPolicy.OLDEST_FIRST)
        if mode not in MODES:
            raise ConfigError(
                f"mode must be 'promotion' (an MST pauses at each rung until it is among its "
                f"top 1/reduction_factor) or 'stopping' (it goes on at once if it is among "
                f"them so far, else ends), got {mode!r}"
            )
        super().__init__(*args, **kwargs)
        self.mode = mode

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "mode": self.mode}

    def _bracket_of(self, index: int) -> int:
        """Bracket of the run's MST number ``index`` (its position in ``trainer.msts()``)."""
        return 0

    def on_start(self, trainer: Trainer) -> None:
        if not trainer.msts():  # a resumed run has its MSTs; on_idle feeds its workers
            self._feed(trainer, trainer.n_workers, self._view(trainer))

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> Decision:
        if result.epoch + 1 < trainer.budget(result.mst_id):
            return Decision.CONTINUE  # it keeps its worker; idle ones get on_idle
        # the reporting MST paused at a rung and frees its worker: give that worker a job
        view = self._view(trainer)
        if self.mode == "stopping" and self._goes_on(
            trainer, view, result.mst_id, result.epoch + 1
        ):
            return Decision.CONTINUE  # it keeps its worker
        self._feed(trainer, trainer.n_workers - view.n_active(trainer.active()), view)
        return Decision.CONTINUE

    def _goes_on(self, trainer: Trainer, view: _View, mst_id: int, epochs: int) -> bool:
        """Stopping mode, at a rung: extend the MST to the next rung if it ranks in the
        top ceil(n_k / reduction_factor) of the rung's reports so far (and is feasible)."""
        bracket = self.brackets[self._bracket_of(view.read.place(mst_id))]
        if epochs not in bracket[:-1] or view.status[mst_id].ended:
            return False
        same = {b for b, other in enumerate(self.brackets) if other == bracket}
        reported = [
            (m, metrics)
            for m, metrics in view.read.at(epochs - 1).items()
            if self._bracket_of(view.read.place(m)) in same
        ]
        top = -(-len(reported) // self.reduction_factor)
        if not self.in_top(reported, mst_id, top) or not self.feasible(
            view.metrics[mst_id][epochs - 1]
        ):
            return False
        trainer.extend(mst_id, bracket[bracket.index(epochs) + 1])
        return True

    def on_idle(self, trainer: Trainer, n_idle: int) -> None:
        self._feed(trainer, n_idle, self._view(trainer))

    def _feed(self, trainer: Trainer, n_jobs: int, view: _View) -> None:
        """Li et al.'s get_job, ``n_jobs`` times: a promotion if any, else a new MST."""
        if n_jobs <= 0:
            return
        promotions = self._promotions(view) if self.mode == "promotion" else []
        n_added = len(view.msts)
        for _ in range(n_jobs):
            if promotions:
                mst_id, epochs = promotions.pop(0)
                trainer.extend(mst_id, epochs)
            elif n_added < self.n_msts:
                first_rung = self.brackets[self._bracket_of(n_added)][0]
                trainer.add(self._propose(n_added, view), epochs=first_rung)
                n_added += 1
            else:
                return

    def _promotions(self, view: _View) -> list[tuple[int, int]]:
        """(mst_id, next rung epochs) of every promotable MST, in the order to promote them:
        bracket by bracket, rungs top down, best first within a rung."""
        out = []
        for b, bracket in enumerate(self.brackets):
            members = [m.id for i, m in enumerate(view.msts) if self._bracket_of(i) == b]
            for k in reversed(range(len(bracket) - 1)):
                ranked = view.ranked(members, bracket[k], self.rank)
                top = ranked[: len(ranked) // self.reduction_factor]
                out += [
                    (m, bracket[k + 1])
                    for m in top
                    if view.paused_at(m, bracket[k])
                    and self.feasible(view.metrics[m][bracket[k] - 1])
                ]
        return out


class ASHA(_AsyncHalving):
    """Asynchronous successive halving (Li et al., 2020): workers never wait on a rung.

    Each time a worker frees (``on_epoch_end`` of an MST whose budget is done, or
    ``on_idle``), ASHA promotes an MST to its next rung if one is in the top
    floor(n_k / reduction_factor) of the n_k MSTs that reported at rung k and is not yet
    promoted (rungs scanned top down, best first, ties to the lower id; stopped and
    failed MSTs are never promoted); otherwise it adds a new random MST with the lowest
    rung's budget, until ``n_msts`` MSTs were added. Best first is the procedure's
    ``rank``: one objective, or Pareto front and crowding with ``objectives``; an MST
    that breaks a constraint is never promoted. ``sampler="kde"`` proposes new MSTs
    as BOHB does (``_kde``), ``sampler="tpe"`` BOHB-style with Optuna's TPE (``_bohb``),
    instead of at random. ``mode="stopping"``: an MST never
    pauses at a rung; it goes on at once if it ranks in the top
    ceil(n_k / reduction_factor) of the rung's reports so far, else it ends there (as
    in Ray Tune's and Syne Tune's stopping ASHA, whose cut-offs differ slightly; see
    docs/procedures.md).
    """

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        max_epochs: int,
        n_msts: int,
        min_epochs: int = 1,
        reduction_factor: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            make_estimator, space, max_epochs=max_epochs, n_msts=n_msts,
            min_epochs=min_epochs, reduction_factor=reduction_factor, **kwargs,
        )  # fmt: skip
        self.brackets = (self.rungs,)


def _bracket_cycle(weights: list[int]) -> tuple[int, ...]:
    """Bracket indices interleaved in proportion to ``weights`` (smooth weighted round robin)."""
    total = sum(weights)
    current = [0] * len(weights)
    cycle = []
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = max(range(len(weights)), key=lambda b: (current[b], -b))
        current[best] -= total
        cycle.append(best)
    return tuple(cycle)


class Hyperband(_AsyncHalving):
    """Asynchronous Hyperband: brackets of ASHA that halve from different first rungs.

    Bracket b = 0..s_max (s_max the largest s with min_epochs * reduction_factor**s <=
    max_epochs) is an ASHA whose lowest rung is min_epochs * reduction_factor**b. New
    MSTs go to brackets in proportions set by ``bracket_weights``:

    - ``"geometric"`` (default): n_b = round(e**(s_max - b)), each bracket e times as
      likely as the next, more conservative one (Syne Tune's asynchronous Hyperband).
      Most MSTs go to the bracket that stops earliest; the others hedge against a
      misleading first rung. On the LCBench surrogate it is no worse than Syne Tune's
      Hyperband at 10 and 30 full-training budgets, where ``"equal_epochs"`` trails
      at 10 (bench/anytime.py; docs/procedures.md).
    - ``"equal_epochs"``: Hyperband's own n_b = ceil((s_max + 1) / (s_max - b + 1) *
      reduction_factor**(s_max - b)) (Li et al., 2018), so every bracket spends about
      the same epochs, the conservative ones (many epochs before their first
      decision) as much as the one that stops earliest.
    - a sequence of positive integers, one per bracket.

    ``bracket_order`` says which bracket the run's j-th MST joins:

    - ``"random"`` (default): drawn with those proportions, independently per MST
      (Syne Tune's way), from a generator seeded by the procedure's seed: the same seed
      gives the same brackets, and a resumed run keeps them. On the LCBench surrogate
      it lowered regret by 0.003-0.006 where the cycle trailed Syne Tune's Hyperband (4
      workers at 10-30 FTE; 32 workers with a quarter of the data each at 30 FTE) and
      was level at the other budgets measured (bench/anytime.py; docs/procedures.md).
    - ``"interleaved"``: ``bracket_cycle[j % len(bracket_cycle)]``, the proportions
      interleaved deterministically (smooth weighted round robin); the default before
      2026-12-05.

    A job is a promotion from the first bracket that has one, else a new MST. Ranking,
    constraints, ``sampler`` and ``mode`` are ASHA's.
    """

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        max_epochs: int,
        n_msts: int,
        min_epochs: int = 1,
        reduction_factor: int = 3,
        bracket_weights: str | Sequence[int] = "geometric",
        bracket_order: str = "random",
        **kwargs: Any,
    ) -> None:
        if bracket_order not in BRACKET_ORDERS:
            raise ConfigError(
                f"bracket_order must be 'random' (each new MST draws its bracket with the "
                f"brackets' proportions) or 'interleaved' (those proportions in a fixed "
                f"cycle), got {bracket_order!r}"
            )
        super().__init__(
            make_estimator, space, max_epochs=max_epochs, n_msts=n_msts,
            min_epochs=min_epochs, reduction_factor=reduction_factor, **kwargs,
        )  # fmt: skip
        eta = self.reduction_factor
        s_max = len(rungs(self.min_epochs, self.max_epochs, eta)) - 1
        if self.min_epochs * eta**s_max > self.max_epochs:  # the last rung is a capped one
            s_max -= 1
        self.brackets = tuple(
            rungs(self.min_epochs * eta**b, self.max_epochs, eta) for b in range(s_max + 1)
        )
        self.bracket_weights = (
            bracket_weights if isinstance(bracket_weights, str) else tuple(bracket_weights)
        )
        self.bracket_sizes = _bracket_sizes(self.bracket_weights, s_max, eta)
        self.bracket_cycle = _bracket_cycle(list(self.bracket_sizes))
        self.bracket_order = bracket_order
        self._drawn: list[int] = []
        self._bracket_rng: np.random.Generator | None = None

    def _bracket_of(self, index: int) -> int:
        # A run pickled before the option existed drew its brackets from the cycle.
        if getattr(self, "bracket_order", "interleaved") == "interleaved":
            return self.bracket_cycle[index % len(self.bracket_cycle)]
        return self._drawn_bracket(index)

    def _drawn_bracket(self, index: int) -> int:
        """The bracket drawn for MST number ``index`` (one draw per MST, in order, memoised,
        so an index's bracket does not depend on when it was first asked)."""
        if index >= len(self._drawn):  # a decision reads many drawn ones: draw only here
            if self._bracket_rng is None:
                self._bracket_rng = np.random.default_rng([self.seed, 2])
            weights = np.array(self.bracket_sizes, dtype=float)
            p = weights / weights.sum()
            while len(self._drawn) <= index:
                self._drawn.append(int(self._bracket_rng.choice(len(weights), p=p)))
        return self._drawn[index]

    def settings(self) -> dict[str, Any]:
        # A run pickled before the option existed kept Hyperband's equal-epoch proportions.
        weights = getattr(self, "bracket_weights", "equal_epochs")
        return {
            **super().settings(),
            "n_brackets": len(self.brackets),
            "bracket_weights": weights if isinstance(weights, str) else list(weights),
            "bracket_order": getattr(self, "bracket_order", "interleaved"),
        }


BRACKET_WEIGHTS = ("geometric", "equal_epochs")
BRACKET_ORDERS = ("random", "interleaved")


def _bracket_sizes(weights: str | Sequence[int], s_max: int, eta: int) -> tuple[int, ...]:
    """MSTs per bracket in one cycle of ``bracket_cycle``."""
    if weights == "geometric":
        return tuple(round(math.e ** (s_max - b)) for b in range(s_max + 1))
    if weights == "equal_epochs":
        return tuple(
            -(-(s_max + 1) * eta ** (s_max - b) // (s_max - b + 1)) for b in range(s_max + 1)
        )
    sizes = None if isinstance(weights, str) else tuple(weights)
    if (
        sizes is None
        or len(sizes) != s_max + 1
        or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in sizes)
    ):
        raise ConfigError(
            f"bracket_weights must be one of {BRACKET_WEIGHTS} or {s_max + 1} positive integers "
            f"(one per bracket, the most aggressive first), got {weights!r}; e.g. "
            f"bracket_weights='geometric'"
        )
    return sizes


class SuccessiveHalving(_Halving):
    """Synchronous successive halving, with a barrier at every rung.

    ``on_start`` adds all ``n_msts`` random MSTs with the lowest rung's budget. Rung k's
    promotions are decided only once every MST that entered it has reported at rung k
    (or was stopped or failed): its top max(1, floor(n_k / reduction_factor)) of the
    n_k that reported go on to rung k + 1. Workers idle at each barrier; ASHA is the
    asynchronous alternative this is compared against.
    """

    def __init__(self, *args: Any, sampler: str = "random", **kwargs: Any) -> None:
        if sampler != "random":
            raise ConfigError(
                "SuccessiveHalving proposes all its MSTs before any result, so it samples "
                f"at random; got sampler={sampler!r}; use ASHA or Hyperband for {sampler!r}"
            )
        super().__init__(*args, **kwargs)
        self._barrier: _Barrier | None = None

    def on_start(self, trainer: Trainer) -> None:
        if not trainer.msts():
            for index in range(self.n_msts):
                trainer.add(self._point(index), epochs=self.rungs[0])

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> Decision:
        if result.epoch + 1 >= trainer.budget(result.mst_id):  # it may complete its rung
            self._promote(trainer, result.mst_id)
        return Decision.CONTINUE

    def on_idle(self, trainer: Trainer, n_idle: int) -> None:
        self._promote(trainer, None)

    def _promote(self, trainer: Trainer, reported: int | None) -> None:
        """Decide the rung being waited on once its last MST has reported (or ended).

        The barrier (the rung, its MSTs, those still to report) is kept between calls:
        each epoch's end takes its MST off, where reading every MST's budget and status
        at every call made a rung of n MSTs cost O(n^2) (3,000 MSTs on the LCBench
        surrogate: a run 98.0 -> 95.9 s, the same decisions). ``on_idle`` also takes off
        the ones that ended (stopped or failed MSTs report nothing). It is built again
        from the trainer when the procedure's read of the results starts over (a resumed
        run) or MSTs were added.
        """
        view = self._view(trainer)
        barrier = self._barrier
        if (
            barrier is None
            or barrier.generation != view.read.generation
            or barrier.n_msts != len(view.msts)
        ):
            barrier = self._barrier = self._find_barrier(view)
        elif reported is None:
            barrier.waiting = {m for m in barrier.waiting if self._awaited(view, m, barrier)}
        elif reported in barrier.waiting and not self._awaited(view, reported, barrier):
            barrier.waiting.discard(reported)
        if barrier.waiting or barrier.rung >= len(self.rungs) - 1:
            return
        epochs = self.rungs[barrier.rung]
        ranked = view.ranked(barrier.entered, epochs, self.rank)
        for m in ranked[: max(1, len(ranked) // self.reduction_factor)]:
            if view.paused_at(m, epochs) and self.feasible(view.metrics[m][epochs - 1]):
                trainer.extend(m, self.rungs[barrier.rung + 1])
        self._barrier = self._next_barrier(trainer, view, barrier)

    def _awaited(self, view: _View, mst_id: int, barrier: _Barrier) -> bool:
        """Whether the rung still waits for this MST: it has not reported and not ended."""
        return not view.status[mst_id].ended and view.done(mst_id) < self.rungs[barrier.rung]

    def _next_barrier(self, trainer: Trainer, view: _View, decided: _Barrier) -> _Barrier:
        """The barrier of the rung after ``decided``: its MSTs are those with a budget that
        reaches it (the ones just promoted: asked of the trainer, not of ``view``, which
        read their budgets before)."""
        rung = decided.rung + 1
        if rung >= len(self.rungs) - 1:
            entered: list[int] = []
        else:
            entered = [m for m in decided.entered if trainer.budget(m) >= self.rungs[rung]]
        return self._open(view, rung, entered, decided.generation, decided.n_msts)

    def _find_barrier(self, view: _View) -> _Barrier:
        """The barrier read from the trainer alone: the lowest rung not decided yet (a
        rung is decided once any of its MSTs has a budget past it); past the last rung
        to decide once all are."""
        for k, epochs in enumerate(self.rungs[:-1]):
            entered = [m.id for m in view.msts if view.budget[m.id] >= epochs]
            if any(view.budget[m] > epochs for m in entered):
                continue  # rung k was decided already
            return self._open(view, k, entered, view.read.generation, len(view.msts))
        return self._open(view, len(self.rungs) - 1, [], view.read.generation, len(view.msts))

    def _open(
        self, view: _View, rung: int, entered: list[int], generation: int, n_msts: int
    ) -> _Barrier:
        """The barrier of rung ``rung`` entered by ``entered``, waiting for those of them
        that have neither reported at it nor ended."""
        barrier = _Barrier(rung, entered, set(), generation, n_msts)
        barrier.waiting = {m for m in entered if self._awaited(view, m, barrier)}
        return barrier


@dataclass
class _Barrier:
    """SuccessiveHalving's rung being waited on: its index in ``rungs``, the MSTs that
    entered it, those it still waits for, and the read of the trainer it was built on."""

    rung: int
    entered: list[int]
    waiting: set[int]
    generation: int
    n_msts: int
