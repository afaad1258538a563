"""SurrogateExecutor: the real engine on a simulated clock, with LCBench's learning curves.

The driver, scheduler, store and procedures run unchanged; only the executor is
simulated. A visit's "training" asks the surrogate (``LCBench``) for the MST's
metrics at that epoch, and costs simulated seconds: a TRAIN step of epoch e (on one
of p shards) costs LCBench's predicted seconds of epoch e / p; an EVAL step costs
``eval_fraction`` times that (default 0: LCBench's epoch time is counted whole on
the train steps); a visit that is sent a state (a hop) costs ``hop_seconds`` more.
``replicas=r`` puts every shard on r workers (as ``LocalExecutor(replicas=r)``;
``r = n_workers``: any worker can run any sub-epoch, as task-parallel peers assume).
``wait()`` is a discrete-event simulation: it returns the visits that finish
earliest in simulated time, so 4 to 64 simulated workers run in seconds of real
time. The real time the driver spends between ``wait()`` calls (procedures'
decisions, scheduling, store writes, checkpoints) is kept off the simulated clock
and reported as ``driver_seconds``.

Mapping: an MST's params are LCBench's hyperparameters (build the space with
``LCBench().space()``; a name left out takes its default, an unknown name fails the
MST); the OpenML task is fixed per executor. The MST's epoch e (0-based, as the
driver counts) is LCBench's epoch e + 1, so at most 52 epochs. Reported metrics
(the driver prefixes ``val_``): ``val_accuracy`` = LCBench's val_accuracy / 100 (a
fraction, as modelhopper's accuracy metric), ``val_loss`` = val_cross_entropy,
``val_balanced_accuracy``. Each epoch's validation set is counted once, on shard 0
(n=1; the other shards report n=0), so the driver's example-weighted mean is the
surrogate's value exactly. LCBench predicts no training metrics: ``train_loss`` is
NaN. The epoch's ``train_seconds`` (every run reports it) is LCBench's predicted
seconds of that epoch, so ``objectives={"val_accuracy": "maximize", "train_seconds":
"minimize"}`` trades accuracy against training cost. A warm-started MST (PBT's
clone) continues its own params' curve from the epoch its parent had reached, as
surrogate benchmarks of PBT do.

The state an MST carries is a small JSON blob (params, epoch offset, train steps
done); every step checks it, so an engine that skipped, repeated or misplaced a
sub-epoch fails that MST with the reason. Run it with::

    bench = LCBench()
    search = mh.ASHA(surrogate_estimator, bench.space(), max_epochs=52, n_msts=64,
                     metric="val_accuracy", direction="maximize")
    executor = SurrogateExecutor(task=3945, bench=bench)
    search.fit(surrogate_dataset(32), n_workers=32, executor=executor)
    executor.simulated_seconds, executor.finish_times, executor.driver_seconds

The dataset is a placeholder (the driver shards it; its contents are ignored) and
``surrogate_estimator`` a tiny real ``Estimator`` for the driver's pre-flight check.
``driver_seconds`` counts everything the driver does between ``wait()`` calls
(procedure hooks, scheduling, store transactions, checkpoint files). A resumed run
(``mh.resume(name, executor=SurrogateExecutor(...))``) restores states from the
checkpoints as usual, but its simulated clock starts again at 0.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelhopper._checks import check_bool, check_int
from modelhopper.data import Dataset
from modelhopper.data._sharding import ShardInfo
from modelhopper.errors import ConfigError, ExecutorError
from modelhopper.estimator import Estimator, PassResult
from modelhopper.executors._base import (
    BaseExecutor,
    StateSource,
    StepOutcome,
    VisitResult,
    VisitTask,
    state_bytes,
)
from modelhopper.scheduling import Step, StepKind, replicated_holdings
from modelhopper.testing._lcbench import LCBENCH_HYPERPARAMETERS, MAX_EPOCH, LCBench

__all__ = [
    "SimulatedTimeUp",
    "SimulatedVisit",
    "SurrogateExecutor",
    "surrogate_dataset",
    "surrogate_estimator",
]


def surrogate_estimator(params: dict[str, Any]) -> Estimator:
    """A tiny real Estimator (1 feature, 2 classes) for the driver's pre-flight check;
    the surrogate does the "training". It reports ``accuracy``, so a procedure may use
    metric ``val_accuracy`` or ``val_loss``."""
    model = nn.Linear(1, 2)
    return Estimator(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=1,
    )


def surrogate_dataset(n_workers: int) -> Dataset:
    """A placeholder Dataset the driver can shard over ``n_workers`` (contents ignored)."""
    check_int("n_workers", n_workers)
    x = np.zeros((n_workers, 1), dtype=np.float32)
    y = np.zeros(n_workers, dtype=np.int64)
    return Dataset.from_numpy(x, y, x.copy(), y.copy())


@dataclass(frozen=True)
class SimulatedVisit:
    """One visit on the simulated clock (for utilisation plots and checks)."""

    worker: int
    mst_id: int
    start: float
    end: float
    steps: tuple[Step, ...]
    hop: bool


class SimulatedTimeUp(Exception):  # noqa: N818  (a stop, not an error)
    """The simulated clock passed the executor's ``stop_at``: the run stops there as if
    interrupted (what finished before is recorded; ``mh.resume`` would go on)."""


class _VisitFailed(Exception):
    """The MST cannot go on (a reason for VisitResult.error)."""


@dataclass
class _Queued:
    worker: int
    task: VisitTask
    start: float


class SurrogateExecutor(BaseExecutor):
    """Simulated workers whose sub-epochs are LCBench surrogate predictions (see the module).

    After a run: ``simulated_seconds`` (the makespan on the simulated clock),
    ``finish_times`` (MST -> simulated time its last visit ended), ``epoch_times``
    ((MST, epoch) -> simulated time the epoch's evaluation ended), ``epoch_accuracy``
    ((MST, epoch) -> its val_accuracy, a fraction), ``epoch_seconds`` ((MST, epoch) ->
    its simulated training seconds, the run's ``train_seconds``), ``busy_seconds``
    (per worker) and their ``utilisation``, ``trace`` (every visit), ``driver_seconds``
    (real seconds the driver spent between ``wait()`` calls) and ``surrogate_seconds``
    (real seconds spent here).
    ``replicas``: workers holding each shard (an int, or ``"all"``), default 1.
    ``shared_validation``: every worker can evaluate every shard's validation part, so
    an epoch is evaluated where its training ends (default: only its own shards').
    """

    def __init__(
        self,
        *,
        task: int | str,
        bench: LCBench | None = None,
        eval_fraction: float = 0.0,
        hop_seconds: float = 0.0,
        stop_at: float | None = None,
        replicas: int | str = 1,
        shared_validation: bool = False,
    ) -> None:
        self.bench = LCBench() if bench is None else bench
        self.shared_validation = check_bool("shared_validation", shared_validation)
        if str(task) not in {str(t) for t in self.bench.tasks}:
            raise ConfigError(
                f"task {task!r} is not an LCBench task; pick one of {list(self.bench.tasks)}"
            )
        for name, value in (("eval_fraction", eval_fraction), ("hop_seconds", hop_seconds)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if stop_at is not None and (
            isinstance(stop_at, bool) or not isinstance(stop_at, int | float) or not stop_at > 0
        ):
            raise ConfigError(f"stop_at must be simulated seconds > 0 or None, got {stop_at!r}")
        if replicas != "all":
            check_int("replicas", replicas, example="replicas=2, or 'all' for every worker")
        self.replicas = replicas
        self.stop_at = stop_at
        self.task = int(task)
        self.eval_fraction = float(eval_fraction)
        self.hop_seconds = float(hop_seconds)
        self._started = False
        self._curves: dict[tuple[float, ...], dict[str, np.ndarray]] = {}
        self._reset(0, [])
        self._holdings: tuple[tuple[int, ...], ...] = ()
        self._n_shards = 0

    def _reset(self, n_workers: int, resident: list[int]) -> None:
        self._n = n_workers
        self._resident = resident
        self._now = 0.0
        self._queued: dict[int, _Queued] = {}  # worker -> visit submitted, not yet simulated
        self._events: list[tuple[float, int, VisitResult]] = []  # (end, worker, result)
        self._busy: dict[int, int] = {}  # worker -> mst_id
        self._held: dict[int, tuple[int, bytes]] = {}  # worker -> (mst_id, state) it holds
        self._returned_at: float | None = None
        self.busy_seconds = [0.0] * n_workers
        self.finish_times: dict[int, float] = {}
        self.epoch_times: dict[tuple[int, int], float] = {}
        self.epoch_accuracy: dict[tuple[int, int], float] = {}
        self.epoch_seconds: dict[tuple[int, int], float] = {}
        self.trace: list[SimulatedVisit] = []
        self.driver_seconds = 0.0
        self.surrogate_seconds = 0.0

    # -- BaseExecutor --------------------------------------------------------------
    @property
    def n_workers(self) -> int:
        return self._n

    @property
    def resident_shard_bytes(self) -> list[int]:
        return list(self._resident)

    @property
    def simulated_seconds(self) -> float:
        """The simulated clock: when the latest visit returned by ``wait()`` ended."""
        return self._now

    @property
    def utilisation(self) -> float:
        """The workers' busy share of the simulated time so far (below 1: they waited)."""
        return sum(self.busy_seconds) / max(len(self.busy_seconds) * self._now, 1e-9)

    def holdings(
        self, shards: Sequence[ShardInfo], n_workers: int | None = None
    ) -> tuple[tuple[int, ...], ...]:
        n = n_workers or len(shards)
        replicas = n if self.replicas == "all" else int(self.replicas)
        return replicated_holdings(n, replicas, len(shards))

    def start(
        self, shards: Sequence[ShardInfo], factory: Callable[..., Any], n_workers: int | None = None
    ) -> None:
        self._refuse_second_start(self._started)
        self._started = True
        n = n_workers or len(shards)
        self._holdings = self.holdings(shards, n)
        self._reset(n, [sum(shards[s].nbytes for s in held) for held in self._holdings])
        self._n_shards = len(shards)
        self._returned_at = time.perf_counter()

    def submit(self, worker: int, task: VisitTask) -> None:
        if not self._started:
            raise ExecutorError("submit() before start(); start the executor first")
        if not 0 <= worker < self._n:
            raise ExecutorError(f"worker {worker} does not exist; workers are 0..{self._n - 1}")
        self._refuse_busy(worker, self._busy.get(worker))
        self._busy[worker] = task.mst_id
        self._queued[worker] = _Queued(worker, task, self._now)

    def wait(self) -> list[VisitResult]:
        self._refuse_idle_wait(len(self._busy))
        entered = time.perf_counter()
        if self._returned_at is not None:
            self.driver_seconds += entered - self._returned_at
        self._simulate_queued()
        end = self._events[0][0]
        if self.stop_at is not None and end > self.stop_at:
            self._forget_after(self.stop_at)
            raise SimulatedTimeUp(
                f"the simulated clock reached its stop_at ({self.stop_at:g} s); the next visit "
                f"ends at {end:g} s"
            )
        results = []
        while self._events and self._events[0][0] == end:
            _, worker, result = heapq.heappop(self._events)
            del self._busy[worker]
            results.append(result)
        self._now = end
        self._returned_at = time.perf_counter()
        self.surrogate_seconds += self._returned_at - entered
        return results

    def shutdown(self) -> None:
        self._queued.clear()
        self._events.clear()
        self._busy.clear()
        self._held.clear()

    def _forget_after(self, moment: float) -> None:
        """Time is up at ``moment``: visits simulated ahead that end later never happened."""
        self._now = moment
        self.busy_seconds = [0.0] * self._n  # what the workers did up to the moment
        for v in self.trace:
            self.busy_seconds[v.worker] += max(0.0, min(v.end, moment) - v.start)
        self.trace = [v for v in self.trace if v.end <= moment]
        self.epoch_times = {k: t for k, t in self.epoch_times.items() if t <= moment}
        self.epoch_accuracy = {k: self.epoch_accuracy[k] for k in self.epoch_times}
        self.epoch_seconds = {k: self.epoch_seconds[k] for k in self.epoch_times}
        self.finish_times = {}
        for visit in self.trace:
            self.finish_times[visit.mst_id] = max(visit.end, self.finish_times.get(visit.mst_id, 0))

    # -- the simulation --------------------------------------------------------------
    def _simulate_queued(self) -> None:
        """Run every submitted visit (one ONNX call for the new MSTs' curves)."""
        queued = [self._queued.pop(w) for w in sorted(self._queued)]
        new: dict[tuple[float, ...], dict[str, float]] = {}
        for q in queued:
            try:
                config = self.bench.config(q.task.params)
            except ConfigError:
                continue  # the visit fails below, saying why
            key = tuple(config[name] for name in LCBENCH_HYPERPARAMETERS)
            if key not in self._curves:
                new[key] = config
        if new:
            curves = self.bench.curves(self.task, list(new.values()))
            for i, key in enumerate(new):
                self._curves[key] = {name: values[i] for name, values in curves.items()}
        for q in queued:
            result, seconds, hop = self._visit(q.worker, q.task)
            end = q.start + seconds
            self.busy_seconds[q.worker] += seconds
            self.trace.append(
                SimulatedVisit(q.worker, q.task.mst_id, q.start, end, q.task.steps, hop)
            )
            self.finish_times[q.task.mst_id] = end
            for outcome in result.outcomes:
                step = outcome.step
                if step.is_last(StepKind.EVAL, self._n_shards):
                    self.epoch_times[q.task.mst_id, step.epoch] = end
            heapq.heappush(self._events, (end, q.worker, result))

    def _visit(self, worker: int, task: VisitTask) -> tuple[VisitResult, float, bool]:
        """The visit's result, its simulated seconds and whether it got a state (a hop)."""
        try:
            state = self._state(worker, task)
            config = self.bench.config(task.params)
        except (_VisitFailed, ConfigError) as e:
            self._held.pop(worker, None)
            return VisitResult(worker, task.mst_id, error=str(e), traceback=str(e)), 0.0, False
        curve = self._curves[tuple(config[name] for name in LCBENCH_HYPERPARAMETERS)]
        hop = task.state is not None
        seconds = self.hop_seconds if hop else 0.0
        outcomes = []
        try:
            for step in task.steps:
                passed = self._step(worker, task.mst_id, step, state, curve)
                seconds += passed.seconds
                outcomes.append(StepOutcome(step, passed))
        except _VisitFailed as e:
            self._held.pop(worker, None)
            return VisitResult(worker, task.mst_id, error=str(e), traceback=str(e)), 0.0, hop
        blob = json.dumps(state, sort_keys=True).encode()
        self._held[worker] = (task.mst_id, blob)
        result = VisitResult(
            worker, task.mst_id, tuple(outcomes), blob, busy_seconds=seconds,
            extra={"simulated": True},
        )  # fmt: skip
        return result, seconds, hop

    def _state(self, worker: int, task: VisitTask) -> dict[str, Any]:
        if task.state is not None:
            return dict(json.loads(state_bytes(task.state)))
        if task.source is StateSource.FRESH:
            offset = 0
            if task.init_state is not None:  # a warm start goes on from the parent's epoch
                parent = json.loads(state_bytes(task.init_state))
                offset = parent["offset"] + parent["trained"] // self._n_shards
            return {"mst": task.mst_id, "offset": offset, "trained": 0}
        held = self._held.get(worker)
        if held is None or held[0] != task.mst_id:
            raise _VisitFailed(
                f"worker {worker} holds no state of MST {task.mst_id} and none was sent"
            )
        return dict(json.loads(held[1]))

    def _step(
        self, worker: int, mst_id: int, step: Step, state: dict[str, Any], curve: Mapping[str, Any]
    ) -> PassResult:
        p = self._n_shards
        shared = step.kind is StepKind.EVAL and self.shared_validation
        if step.shard not in self._holdings[worker] and not shared:
            raise _VisitFailed(
                f"step {step} of MST {mst_id} is for shard {step.shard}, ran on {worker}"
            )
        epoch = state["offset"] + step.epoch + 1  # LCBench's epochs are 1-based
        if epoch > MAX_EPOCH:
            raise _VisitFailed(
                f"MST {mst_id} asks for LCBench epoch {epoch}; the surrogate knows epochs 1-"
                f"{MAX_EPOCH}: use max_epochs <= {MAX_EPOCH - state['offset']}"
            )
        epoch_seconds = float(curve["epoch_seconds"][epoch - 1])
        first = step.shard == 0  # the shard that counts the epoch's examples once
        if step.kind is StepKind.TRAIN:
            expected = step.epoch * p + step.position
            if state["trained"] != expected:
                raise _VisitFailed(
                    f"MST {mst_id} trained {state['trained']} sub-epochs, but step {step} "
                    f"expects {expected}: the engine skipped or repeated a sub-epoch"
                )
            state["trained"] += 1
            return PassResult(int(first), math.nan if first else 0.0, {}, epoch_seconds / p)
        if state["trained"] != (step.epoch + 1) * p:
            raise _VisitFailed(
                f"MST {mst_id} evaluates epoch {step.epoch} after {state['trained']} sub-epochs "
                f"of training, not {(step.epoch + 1) * p}"
            )
        accuracy = float(curve["val_accuracy"][epoch - 1]) / 100.0
        if first:
            self.epoch_accuracy[mst_id, step.epoch] = accuracy
            self.epoch_seconds[mst_id, step.epoch] = epoch_seconds
        sums = {
            "accuracy": accuracy if first else 0.0,
            "balanced_accuracy": float(curve["val_balanced_accuracy"][epoch - 1]) if first else 0.0,
        }
        loss = float(curve["val_cross_entropy"][epoch - 1]) if first else 0.0
        return PassResult(int(first), loss, sums, self.eval_fraction * epoch_seconds / p)
