"""The peers of bench/anytime.py on one simulated clock: Optuna, Syne Tune and DEHB.

None of the peers runs on modelhopper's engine, so each is driven here by one
discrete-event simulation of ``n_workers`` asynchronous workers over the same
LCBench surrogate and cost model as ``SurrogateExecutor``: an epoch costs the
surrogate's predicted epoch seconds; a worker that finishes (or stops) a job asks
its method for the next one at once. Methods that stop trials early (Optuna's
pruners, Syne Tune's stopping ASHA/Hyperband/BOHB) see a report after every
epoch; DEHB trains a configuration from scratch to the fidelity it asks for and
is told the result at the end, as DEHB's own workers do. The decision time of the
peers is real time outside the simulated clock, as for modelhopper.

Each method is a ``Peer``: ``ask()`` a job, ``report()`` an epoch's accuracy
(False: stop the job), ``done()`` when a job ends.
"""

from __future__ import annotations

import heapq
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from modelhopper.testing import LCBench

MAX_EPOCHS = 52
ETA = 3


@dataclass
class Job:
    """A configuration trained from epoch 0 for up to ``epochs`` epochs."""

    params: dict[str, float]
    epochs: int
    report_each: bool  # False: the method hears only the last epoch's accuracy
    handle: Any = None
    trained: int = 0
    seconds: float = 0.0
    curve: dict[str, np.ndarray] = field(default_factory=dict)


class Peer(Protocol):
    def ask(self) -> Job: ...

    def report(self, job: Job, epoch: int, accuracy: float) -> bool: ...

    def done(self, job: Job, accuracy: float) -> None: ...


def simulate(
    peer: Peer, bench: LCBench, task: int, n_workers: int, stop_at: float,
    with_seconds: bool = False,
) -> list[tuple[float, ...]]:  # fmt: skip
    """(simulated time, val_accuracy) of every accuracy the method heard, up to ``stop_at``;
    ``with_seconds``: (simulated time, val_accuracy, the epoch's seconds)."""
    heard: list[tuple[float, ...]] = []
    events: list[tuple[float, int, Job]] = []  # (end of the job's next epoch, worker, job)

    def begin(now: float, worker: int) -> None:
        job = peer.ask()
        curves = bench.curves(task, [bench.config(job.params)])
        job.curve = {name: values[0] for name, values in curves.items()}
        heapq.heappush(events, (now + float(job.curve["epoch_seconds"][0]), worker, job))

    for worker in range(n_workers):
        begin(0.0, worker)
    while events:
        now, worker, job = heapq.heappop(events)
        if now > stop_at:
            break
        epoch = job.trained
        job.trained += 1
        accuracy = float(job.curve["val_accuracy"][epoch]) / 100.0
        last = job.trained == job.epochs
        go_on = not last
        if job.report_each or last:
            seconds = float(job.curve["epoch_seconds"][epoch])
            heard.append((now, accuracy, seconds) if with_seconds else (now, accuracy))
        if job.report_each and not last:
            go_on = peer.report(job, epoch + 1, accuracy)
        if go_on:
            end = now + float(job.curve["epoch_seconds"][job.trained])
            heapq.heappush(events, (end, worker, job))
        else:
            peer.done(job, accuracy)
            begin(now, worker)
    return heard


def _suggest(trial: Any, hps: dict[str, dict[str, Any]]) -> dict[str, float]:
    """An Optuna trial's values for LCBench's hyperparameters."""
    params: dict[str, float] = {}
    for name, hp in hps.items():
        if hp["type"] == "uniform_int":
            low, high = int(hp["lower"]), int(hp["upper"])
            params[name] = trial.suggest_int(name, low, high, log=hp["log"])
        else:
            params[name] = trial.suggest_float(name, hp["lower"], hp["upper"], log=hp["log"])
    return params


# -- Optuna: TPE with its Hyperband or successive-halving pruner -----------------------
class OptunaPeer:
    def __init__(self, bench: LCBench, seed: int, pruner: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        pruners = {
            "hyperband": optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=MAX_EPOCHS, reduction_factor=ETA
            ),
            "sha": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=ETA),
        }
        self.study = optuna.create_study(
            study_name=f"anytime-{seed}",  # HyperbandPruner hashes it into brackets
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruners[pruner],
        )
        self.hps = bench.hyperparameters()

    def ask(self) -> Job:
        trial = self.study.ask()
        return Job(_suggest(trial, self.hps), MAX_EPOCHS, report_each=True, handle=trial)

    def report(self, job: Job, epoch: int, accuracy: float) -> bool:
        job.handle.report(accuracy, epoch)
        if job.handle.should_prune():
            self.study.tell(job.handle, state=self._optuna.trial.TrialState.PRUNED)
            job.handle = None
            return False
        return True

    def done(self, job: Job, accuracy: float) -> None:
        if job.handle is not None:  # pruned trials were told already
            self.study.tell(job.handle, accuracy)


# -- Syne Tune: its stopping ASHA (1 bracket: ASHA; several: asynchronous Hyperband) and BOHB
class SyneTunePeer:
    def __init__(self, bench: LCBench, seed: int, method: str) -> None:
        from syne_tune.optimizer.baselines import ASHA, BOHB

        space = _syne_tune_space(bench)
        np.random.seed(seed)  # Syne Tune's ASHA draws brackets from NumPy's global RNG
        common = {
            "config_space": space, "metric": "accuracy", "time_attr": "epoch",
            "max_t": MAX_EPOCHS, "do_minimize": False, "random_seed": seed,
            "grace_period": 1, "reduction_factor": ETA,
        }  # fmt: skip
        brackets = 1 + int(math.log(MAX_EPOCHS, ETA))  # rungs 1, 3, 9, 27: 4 brackets
        if method == "asha":
            self.scheduler = ASHA(**common)
        elif method == "hyperband":
            self.scheduler = ASHA(**common, brackets=brackets)
        elif method == "bohb":
            self.scheduler = BOHB(**common)
        else:
            raise ValueError(f"unknown Syne Tune method {method!r}")
        self._next_id = 0
        self._names = list(space)
        self._bounds = {n: (hp["lower"], hp["upper"]) for n, hp in bench.hyperparameters().items()}
        self.clipped = 0  # proposals outside the domain, held to it

    def ask(self) -> Job:
        from syne_tune.backend.trial_status import Trial

        suggestion = self.scheduler.suggest()
        trial = Trial(self._next_id, suggestion.config, datetime.now())
        self._next_id += 1
        self.scheduler.on_trial_add(trial)
        # Syne Tune 0.16's KDE searcher (BOHB) can propose a log-int just outside its
        # domain (batch_size=11 of [16, 512] seen): held to the domain, and counted.
        params = {}
        for name in self._names:
            low, high = self._bounds[name]
            value = float(trial.config[name])
            params[name] = min(max(value, low), high)
            self.clipped += params[name] != value
        return Job(params, MAX_EPOCHS, report_each=True, handle=trial)

    def report(self, job: Job, epoch: int, accuracy: float) -> bool:
        decision = self.scheduler.on_trial_result(
            job.handle, {"accuracy": accuracy, "epoch": epoch}
        )
        return decision == "CONTINUE"

    def done(self, job: Job, accuracy: float) -> None:
        if job.trained == job.epochs:
            result = {"accuracy": accuracy, "epoch": job.trained}
            self.scheduler.on_trial_result(job.handle, result)
            self.scheduler.on_trial_complete(job.handle, result)


# -- DEHB: differential evolution over Hyperband's brackets, through ask and tell -------
class DEHBPeer:
    def __init__(self, bench: LCBench, seed: int) -> None:
        import ConfigSpace as CS
        from dehb import DEHB
        from loguru import logger

        logger.remove()  # DEHB logs every job at INFO
        space = CS.ConfigurationSpace(seed=seed)
        for name, hp in bench.hyperparameters().items():
            if hp["type"] == "uniform_int":
                space.add(
                    CS.UniformIntegerHyperparameter(
                        name, int(hp["lower"]), int(hp["upper"]), log=hp["log"]
                    )
                )
            else:
                space.add(
                    CS.UniformFloatHyperparameter(name, hp["lower"], hp["upper"], log=hp["log"])
                )
        self._dir = tempfile.TemporaryDirectory(prefix="dehb-")
        self.dehb = DEHB(
            cs=space,
            dimensions=len(space),
            min_fidelity=1,
            max_fidelity=MAX_EPOCHS,
            eta=ETA,
            n_workers=1,
            seed=seed,
            output_path=self._dir.name,
            save_freq="end",
        )  # fmt: skip  (n_workers=1: no Dask cluster; ask and tell keep any number busy)

    def ask(self) -> Job:
        info = self.dehb.ask()
        config = info["config"]  # a ConfigSpace Configuration (configspace=True)
        params = {name: float(value) for name, value in dict(config).items()}
        epochs = max(1, min(MAX_EPOCHS, round(info["fidelity"])))
        return Job(params, epochs, report_each=False, handle=info)

    def report(self, job: Job, epoch: int, accuracy: float) -> bool:
        raise AssertionError("DEHB jobs report only at the end")

    def done(self, job: Job, accuracy: float) -> None:
        cost = float(np.sum(job.curve["epoch_seconds"][: job.trained]))
        self.dehb.tell(job.handle, {"fitness": -accuracy, "cost": cost})


# -- several objectives: accuracy up, the epoch's training seconds down ------------------
def _syne_tune_space(bench: LCBench) -> dict[str, Any]:
    from syne_tune.config_space import lograndint, loguniform, randint, uniform

    space: dict[str, Any] = {}
    for name, hp in bench.hyperparameters().items():
        low, high = hp["lower"], hp["upper"]
        if hp["type"] == "uniform_int":
            space[name] = (lograndint if hp["log"] else randint)(int(low), int(high))
        else:
            space[name] = (loguniform if hp["log"] else uniform)(low, high)
    return space


class SyneTuneMOPeer:
    """Syne Tune's MOASHA (non-dominated sorting at each rung; stopping), one bracket or
    Hyperband's four."""

    def __init__(self, bench: LCBench, seed: int, brackets: int) -> None:
        from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

        np.random.seed(seed)  # MOASHA samples configs and brackets from NumPy's global RNG
        self.scheduler = MOASHA(
            _syne_tune_space(bench), metrics=["error", "epoch_seconds"], do_minimize=True,
            time_attr="epoch", max_t=MAX_EPOCHS, grace_period=1, reduction_factor=ETA,
            brackets=brackets, random_seed=seed,
        )  # fmt: skip
        self._next_id = 0

    def ask(self) -> Job:
        from syne_tune.backend.trial_status import Trial

        suggestion = self.scheduler.suggest()
        trial = Trial(self._next_id, suggestion.config, datetime.now())
        self._next_id += 1
        self.scheduler.on_trial_add(trial)
        params = {name: float(value) for name, value in trial.config.items()}
        return Job(params, MAX_EPOCHS, report_each=True, handle=trial)

    def _result(self, job: Job, epoch: int, accuracy: float) -> dict[str, float]:
        seconds = float(job.curve["epoch_seconds"][epoch - 1])
        return {"error": 1.0 - accuracy, "epoch_seconds": seconds, "epoch": epoch}

    def report(self, job: Job, epoch: int, accuracy: float) -> bool:
        decision = self.scheduler.on_trial_result(job.handle, self._result(job, epoch, accuracy))
        return decision == "CONTINUE"

    def done(self, job: Job, accuracy: float) -> None:
        if job.trained == job.epochs:
            self.scheduler.on_trial_result(job.handle, self._result(job, job.trained, accuracy))


class OptunaMOPeer:
    """An Optuna multi-objective sampler (NSGA-II or TPE) through ask and tell: Optuna's
    pruners take one objective, so each configuration trains fully, reporting each epoch."""

    def __init__(self, bench: LCBench, seed: int, sampler: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        samplers = {
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        }
        self.study = optuna.create_study(
            directions=["maximize", "minimize"], sampler=samplers[sampler]()
        )
        self.hps = bench.hyperparameters()

    def ask(self) -> Job:
        trial = self.study.ask()
        return Job(_suggest(trial, self.hps), MAX_EPOCHS, report_each=True, handle=trial)

    def report(self, job: Job, epoch: int, accuracy: float) -> bool:
        return True

    def done(self, job: Job, accuracy: float) -> None:
        seconds = float(job.curve["epoch_seconds"][job.trained - 1])
        self.study.tell(job.handle, [accuracy, seconds])


MO_PEERS: dict[str, Callable[[LCBench, int], Peer]] = {
    "Syne Tune MOASHA": lambda b, s: SyneTuneMOPeer(b, s, brackets=1),
    "Syne Tune MO-Hyperband": lambda b, s: SyneTuneMOPeer(b, s, brackets=4),
    "Optuna NSGA-II": lambda b, s: OptunaMOPeer(b, s, "nsga2"),
    "Optuna MOTPE": lambda b, s: OptunaMOPeer(b, s, "tpe"),
}


PEERS: dict[str, Callable[[LCBench, int], Peer]] = {
    "Optuna TPE + Hyperband pruner": lambda b, s: OptunaPeer(b, s, "hyperband"),
    "Optuna TPE + SH pruner": lambda b, s: OptunaPeer(b, s, "sha"),
    "Syne Tune ASHA": lambda b, s: SyneTunePeer(b, s, "asha"),
    "Syne Tune Hyperband": lambda b, s: SyneTunePeer(b, s, "hyperband"),
    "Syne Tune BOHB": lambda b, s: SyneTunePeer(b, s, "bohb"),
    "DEHB": DEHBPeer,
}
