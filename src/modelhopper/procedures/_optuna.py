"""Optuna's samplers (TPE, CMA-ES, GP, NSGA-II, random, ...) proposing MSTs, by ask and tell.

The procedure owns an in-memory Optuna study: the study *is* the sampler's state, the
one thing a procedure keeps besides the trainer. Each new MST is ``study.ask`` with
fixed distributions translated from the space (choice/grid -> categorical, uniform ->
float, loguniform -> float with log, randint -> int with high - 1, quniform -> float
with step q; constants are added to the params, not sampled). An MST's value is its
last epoch's metric; it is told to the study once the MST is over: completed (its
budget done), stopped (with its last value) or failed (``TrialState.FAIL``; so is an
MST that ended without a finite value).

The Trainer has no "MST ended" callback, so every hook first compares the trainer's
MSTs with what the study was told: an MST whose status is completed, stopped or failed
and that was not told yet is told then, and ``on_epoch_end`` tells the reporting MST
when that epoch ends its budget (result.epoch + 1 == budget). On a resumed run
``on_start`` rebuilds the study from the trainer (finished MSTs as finished trials,
pending and running ones as running trials) and asks nothing more than a fresh run
would. MSTs added by others (e.g. a user's command) are told as finished trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from modelhopper._checks import check_int
from modelhopper._vocabulary import MSTStatus
from modelhopper.errors import ConfigError, ModelHopperError, SpaceError
from modelhopper.estimator import Estimator, derive_seed
from modelhopper.procedures._base import (
    MST,
    BaseProcedure,
    Decision,
    EpochResult,
    Trainer,
)
from modelhopper.space import (
    Choice,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    Space,
    Uniform,
)

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.samplers import BaseSampler

__all__ = ["OptunaSearch", "TPESearch"]

_SCALAR = (type(None), bool, int, float, str)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise ConfigError(
            "OptunaSearch and TPESearch need optuna: pip install 'modelhopper[optuna]'"
        ) from e
    return optuna


@contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """Optuna logs every trial at INFO; keep it to warnings while we drive the study."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _multiple(value: float, q: float) -> bool:
    return Decimal(repr(value)) % Decimal(repr(q)) == 0


class _Codec:
    """The space as fixed Optuna distributions, and params to and from trial params."""

    def __init__(self, space: Space, optuna: Any) -> None:
        d = optuna.distributions
        self.distributions: dict[str, BaseDistribution] = {}
        self.choices: dict[str, tuple[Any, ...]] = {}  # non-scalar choices, by index
        self.constants: dict[str, Any] = {}
        for name, domain in space.domains.items():
            if isinstance(domain, (Choice, Grid)):
                if all(type(v) in _SCALAR for v in domain.values):
                    self.distributions[name] = d.CategoricalDistribution(domain.values)
                else:  # lists and dicts are not Optuna choices: sample their index
                    self.choices[name] = domain.values
                    choices = tuple(range(len(domain.values)))
                    self.distributions[name] = d.CategoricalDistribution(choices)
            elif isinstance(domain, LogUniform):
                self.distributions[name] = d.FloatDistribution(domain.low, domain.high, log=True)
            elif isinstance(domain, Uniform):
                self.distributions[name] = d.FloatDistribution(domain.low, domain.high)
            elif isinstance(domain, RandInt):
                self.distributions[name] = d.IntDistribution(domain.low, domain.high - 1)
            elif isinstance(domain, QUniform):
                low, high, q = domain.low, domain.high, domain.q
                if not (_multiple(low, q) and _multiple(high, q)):
                    raise SpaceError(
                        f"quniform({name!r}) needs low and high that are multiples of q for "
                        f"Optuna, which samples low + k*q while the space holds multiples of q; "
                        f"got low={low!r}, high={high!r}, q={q!r}; e.g. "
                        f"quniform({_snap(low, q, up=True)!r}, {_snap(high, q, up=False)!r}, "
                        f"{q!r})"
                    )
                self.distributions[name] = d.FloatDistribution(low, high, step=q)
            else:
                self.constants[name] = domain

    def decode(self, trial_params: Mapping[str, Any]) -> dict[str, Any]:
        params = {}
        for name, value in trial_params.items():
            params[name] = self.choices[name][value] if name in self.choices else value
        return {**params, **self.constants}

    def encode(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Trial params of an MST's params (choices of lists/dicts as their index)."""
        out = {}
        for name in self.distributions:
            if name not in params:
                return None
            value = params[name]
            if name in self.choices:
                hits = [i for i, v in enumerate(self.choices[name]) if v == value]
                if not hits:
                    return None
                value = hits[0]
            out[name] = value
        return out


def _snap(value: float, q: float, *, up: bool) -> float:
    steps = Decimal(repr(value)) / Decimal(repr(q))
    whole = int(steps.to_integral_value(rounding="ROUND_CEILING" if up else "ROUND_FLOOR"))
    return float(Decimal(whole) * Decimal(repr(q)))


class OptunaSearch(BaseProcedure):
    """``n_msts`` MSTs proposed by an Optuna sampler, as workers free up.

    ``sampler`` is an Optuna sampler, a function ``seed -> sampler``, or None for
    ``TPESampler``. A function (and None) is called afresh with a seed derived from
    ``seed`` and the MST's number before every proposal, so each proposal is a function
    of the seed and of what the study was told, and a resumed run proposes what the
    uninterrupted one would; a sampler object is used as is (its own random stream
    restarts on resume).

    ``on_start`` proposes max(n_workers, ``n_initial``) MSTs; each time an MST's budget is
    done and each time workers are idle, new MSTs are proposed so every worker stays
    busy, until ``n_msts`` were proposed. ``study`` is the Optuna study (after ``on_start``).
    """

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        n_msts: int,
        epochs: int,
        sampler: BaseSampler | Callable[[int], BaseSampler] | None = None,
        n_initial: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(make_estimator, space, epochs=epochs, **kwargs)
        if self.constraints:
            raise ConfigError(
                f"{type(self).__name__} does not take constraints; ASHA, Hyperband, "
                "SuccessiveHalving and PBT do (several objectives work here too)"
            )
        self.n_msts = check_int("n_msts", n_msts, example="n_msts=32")
        self.n_initial = check_int("n_initial", n_initial, example="n_initial=4")
        base = _import_optuna().samplers.BaseSampler
        if sampler is not None and not isinstance(sampler, base):
            probe = sampler(self._seed_for(-1)) if callable(sampler) else None
            if not isinstance(probe, base):
                raise ConfigError(
                    "sampler must be an Optuna sampler, a function seed -> sampler, or None "
                    f"for TPE, got {sampler!r}; e.g. sampler=optuna.samplers.RandomSampler(seed=0)"
                )
        self.sampler = sampler
        self._codec = _Codec(self.space, _import_optuna())
        self.study: optuna.Study | None = None
        self._trials: dict[int, int] = {}  # MST id -> trial number, until told
        self._told: set[int] = set()

    def settings(self) -> dict[str, Any]:
        sampler = self._sampler_for(self._seed_for(-1))
        return {
            **super().settings(),
            "n_msts": self.n_msts,
            "n_initial": self.n_initial,
            "sampler": type(sampler).__name__,
        }

    def _seed_for(self, index: int) -> int:
        """The sampler seed for proposing the run's MST number ``index`` (32 bits, as Optuna's)."""
        return derive_seed(self.seed, 3, index + 1) % 2**32

    def _sampler_for(self, seed: int) -> BaseSampler:
        """The sampler for one proposal; ``seed`` is derived from the MST's number."""
        if self.sampler is None:
            sampler: BaseSampler = _import_optuna().samplers.TPESampler(seed=seed)
            return sampler
        if callable(self.sampler):  # samplers are not callable; checked in __init__
            return self.sampler(seed)
        return self.sampler

    # ------------------------------------------------------------ hooks

    def on_start(self, trainer: Trainer) -> None:
        with _quiet(_import_optuna()):
            self.study = _import_optuna().create_study(  # one direction per objective
                directions=[d.value for d in self.objectives.values()],
                sampler=self._sampler_for(self._seed_for(-1)),
            )
        self._trials, self._told = {}, set()
        msts = trainer.msts()
        if msts:  # a resumed run: rebuild the study, propose nothing more than on_idle does
            for mst in msts:
                self._adopt(trainer, mst)
            return
        self._propose(trainer, max(trainer.n_workers, self.n_initial), msts)

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> Decision:
        ended = result.mst_id if result.epoch + 1 >= trainer.budget(result.mst_id) else None
        msts = self._sync(trainer, ended=ended, last=result)
        n_active = sum(mst_id != ended for mst_id in trainer.active())
        self._propose(trainer, trainer.n_workers - n_active, msts)
        return Decision.CONTINUE

    def on_idle(self, trainer: Trainer, n_idle: int) -> None:
        msts = self._sync(trainer)
        self._propose(trainer, n_idle, msts)

    # ------------------------------------------------------------ ask and tell

    def _study_or_raise(self) -> optuna.Study:
        if self.study is None:
            raise ModelHopperError(
                f"{type(self).__name__} has no study yet: the experiment calls on_start(trainer) "
                "before any other hook; call it first when driving the procedure by hand"
            )
        return self.study

    def _propose(self, trainer: Trainer, n: int, msts: list[MST]) -> None:
        study = self._study_or_raise()
        n = min(n, self.n_msts - len(msts))
        for index in range(len(msts), len(msts) + max(n, 0)):
            study.sampler = self._sampler_for(self._seed_for(index))
            with _quiet(_import_optuna()):
                trial = study.ask(self._codec.distributions)
            mst = trainer.add(self._codec.decode(trial.params), epochs=self.epochs)
            self._trials[mst.id] = trial.number

    def _sync(
        self, trainer: Trainer, *, ended: int | None = None, last: EpochResult | None = None
    ) -> list[MST]:
        """Tell the study about every MST that is over and was not told yet."""
        msts = trainer.msts()
        for mst in msts:
            if mst.id in self._told:
                continue
            if mst.id == ended or not trainer.status(mst.id).active:
                result = last if last is not None and last.mst_id == mst.id else None
                self._tell(trainer, mst, result)
        return msts

    def _outcome(
        self, trainer: Trainer, mst_id: int, last: EpochResult | None
    ) -> tuple[Any, list[float] | None]:
        """The trial's state and its values: each objective's metric at the MST's last
        epoch (the study knows each one's direction); a missing or non-finite one fails it."""
        state = _import_optuna().trial.TrialState
        if trainer.status(mst_id) is MSTStatus.FAILED:
            return state.FAIL, None
        if last is None:
            results = trainer.results(mst_id)
            if not results:
                return state.FAIL, None
            last = results[-1]
        values = [last.metrics.get(name) for name in self.objectives]
        if not all(_finite(v) for v in values):
            return state.FAIL, None
        return state.COMPLETE, [float(v) for v in values]  # type: ignore[arg-type]

    def _tell(self, trainer: Trainer, mst: MST, last: EpochResult | None) -> None:
        study = self._study_or_raise()
        state, values = self._outcome(trainer, mst.id, last)
        number = self._trials.pop(mst.id, None)
        with _quiet(_import_optuna()):
            if number is not None:
                study.tell(number, values, state=state)
            else:
                self._add_trial(mst, state, values)
        self._told.add(mst.id)

    def _adopt(self, trainer: Trainer, mst: MST) -> None:
        """Add a trial for an MST the study did not propose (resume, or added by others)."""
        study = self._study_or_raise()
        if not trainer.status(mst.id).active:
            self._tell(trainer, mst, None)
        elif self._add_trial(mst, _import_optuna().trial.TrialState.RUNNING, None):
            self._trials[mst.id] = len(study.get_trials(deepcopy=False)) - 1

    def _add_trial(self, mst: MST, state: Any, values: list[float] | None) -> bool:
        study = self._study_or_raise()
        params = self._codec.encode(mst.params)
        if params is None:  # not a point of the space (e.g. a user's clone-with-changes)
            return False
        try:
            trial = _import_optuna().trial.create_trial(
                params=params,
                distributions=self._codec.distributions,
                values=values,
                state=state,
            )
        except ValueError:  # a value outside its distribution
            return False
        study.add_trial(trial)
        return True


class TPESearch(OptunaSearch):
    """``OptunaSearch`` with Optuna's ``TPESampler`` (Tree-structured Parzen Estimator).

    ``n_startup_trials`` MSTs are random before TPE models the results; ``multivariate``
    models parameters jointly (None: Optuna's default, joint for one objective). For
    other TPE options pass ``sampler=lambda seed: optuna.samplers.TPESampler(seed=seed,
    ...)`` to ``OptunaSearch``.
    """

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        n_msts: int,
        epochs: int,
        n_startup_trials: int = 10,
        multivariate: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if "sampler" in kwargs:
            raise ConfigError(
                "TPESearch makes its own TPESampler, got sampler=...; "
                "use OptunaSearch(sampler=...) for another sampler"
            )
        if (
            isinstance(n_startup_trials, bool)
            or not isinstance(n_startup_trials, int)
            or n_startup_trials < 0
        ):
            raise ConfigError(
                f"n_startup_trials must be an integer >= 0, got {n_startup_trials!r}; e.g. 10"
            )
        self.n_startup_trials = n_startup_trials
        self.multivariate = None if multivariate is None else bool(multivariate)
        super().__init__(make_estimator, space, n_msts=n_msts, epochs=epochs, **kwargs)

    def _sampler_for(self, seed: int) -> BaseSampler:
        sampler: BaseSampler = _import_optuna().samplers.TPESampler(
            seed=seed, n_startup_trials=self.n_startup_trials, multivariate=self.multivariate
        )
        return sampler

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "n_startup_trials": self.n_startup_trials,
            "multivariate": self.multivariate,
        }
