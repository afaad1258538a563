"""``FakeTrainer``: the ``Trainer`` protocol in memory, with a simulated clock, to test procedures.

It runs a procedure the way the experiment driver does, without processes or models::

    trainer = FakeTrainer(ASHA(make, space, max_epochs=9, n_msts=27), n_workers=4,
                          objective_fn=lambda params, epoch: (params["lr"] - 0.01) ** 2)
    trainer.run()
    trainer.log  # EpochLog(start, end, worker, mst_id, epoch, evaluated), as epochs end

Each epoch of an MST occupies one free worker for ``cost(params)`` simulated seconds
(1 by default); at most ``n_workers`` epochs are in flight. Hooks are called as the
driver calls them: ``on_start`` once, ``on_epoch_end`` after each evaluated epoch (the
MST's status still says running; it becomes completed after the hook if that epoch
ended its budget, and STOP stops it only if epochs remain), ``on_idle``
whenever a worker is left with nothing runnable after an event. Runnable MSTs go to
free workers lowest id first. ``objective_fn(params, epoch)`` returns the metric value
(or a mapping of metrics); raising ``MSTFailedError`` fails that MST only. Stopping an
MST whose epoch is in flight lets the worker finish it but drops its result.

``calls`` records the procedure's ``add``/``extend``/``stop`` calls in order,
``idle_calls`` each ``on_idle``; ``evaluate`` scripts one result by hand; ``run(n_epochs=k)``
pauses after k epochs and ``resume(new_procedure)`` continues as a restarted driver would.
The fake is strict, to catch procedure bugs: params are checked with the procedure's
space, budgets may only grow, a stopped or failed MST cannot be extended, and only a
pending or running MST can be stopped (as in the driver).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelhopper._checks import check_int
from modelhopper._vocabulary import MST, Decision, EpochResult, MSTStatus
from modelhopper.errors import ConfigError, ModelHopperError, MSTFailedError
from modelhopper.procedures._base import BaseProcedure

__all__ = ["EpochLog", "FakeTrainer"]

ObjectiveFn = Callable[[dict[str, Any], int], float | Mapping[str, float]]


@dataclass(frozen=True)
class EpochLog:
    """One epoch run on a worker; ``evaluated`` is False if the MST was stopped meanwhile."""

    start: float
    end: float
    worker: int
    mst_id: int
    epoch: int
    evaluated: bool = True


@dataclass
class _Flight:
    end: float
    worker: int
    mst_id: int
    epoch: int
    start: float


class FakeTrainer:
    """An in-memory ``Trainer`` that runs ``procedure`` on ``n_workers`` simulated workers."""

    def __init__(
        self,
        procedure: BaseProcedure,
        n_workers: int,
        objective_fn: ObjectiveFn,
        *,
        cost: Callable[[dict[str, Any]], float] | None = None,
        max_epochs: int = 100_000,
    ) -> None:
        check_int("n_workers", n_workers, example="n_workers=2")
        self.procedure = procedure
        self._n_workers = n_workers
        self.objective_fn = objective_fn
        self.cost = cost or (lambda params: 1.0)
        self.max_epochs = max_epochs
        self.time = 0.0
        self.log: list[EpochLog] = []
        self.idle_calls: list[tuple[float, int]] = []  # (time, n_idle) of each on_idle call
        self.calls: list[tuple[str, int, int | None]] = []  # ("add"|"extend"|"stop", id, epochs)
        self.stopped_at: dict[int, float] = {}
        self.warm_start: dict[int, bool] = {}
        self.errors: dict[int, str] = {}
        self._msts: list[MST] = []
        self._budget: dict[int, int] = {}
        self._status: dict[int, MSTStatus] = {}
        self._results: list[EpochResult] = []
        self._done: dict[int, int] = {}  # evaluated epochs per MST
        self._flights: list[_Flight] = []
        self._started = False

    # ------------------------------------------------------------ the Trainer protocol

    @property
    def n_workers(self) -> int:
        return self._n_workers

    def add(
        self,
        params: Mapping[str, Any],
        *,
        epochs: int,
        parent: int | None = None,
        warm_start: bool = False,
    ) -> MST:
        check_int("epochs", epochs)
        if parent is not None:
            self._check_id(parent)
        if warm_start and parent is None:
            raise ConfigError("warm_start=True needs a parent MST to copy weights from")
        point = self.procedure.space.validate_point(params)
        mst = self.procedure.make_mst(len(self._msts), point, parent)
        self._msts.append(mst)
        self._budget[mst.id] = epochs
        self._status[mst.id] = MSTStatus.PENDING
        self._done[mst.id] = 0
        self.warm_start[mst.id] = warm_start
        self.calls.append(("add", mst.id, epochs))
        return mst

    def extend(self, mst_id: int, epochs: int) -> None:
        self._check_id(mst_id)
        if self._status[mst_id].ended:
            raise ConfigError(
                f"MST {mst_id} is {self._status[mst_id].value} and cannot be extended"
            )
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < self._budget[mst_id]:
            raise ConfigError(
                f"extend raises a budget: epochs must be an int >= {self._budget[mst_id]} "
                f"for MST {mst_id}, got {epochs!r}"
            )
        if epochs == self._budget[mst_id]:
            return
        self._budget[mst_id] = epochs
        self.calls.append(("extend", mst_id, epochs))
        if self._status[mst_id] is MSTStatus.COMPLETED and self._done[mst_id] < epochs:
            self._status[mst_id] = MSTStatus.RUNNING

    def stop(self, mst_id: int) -> None:
        self._check_id(mst_id)
        if not self._status[mst_id].active:
            raise ConfigError(
                f"MST {mst_id} is already {self._status[mst_id].value}; only pending or running "
                "MSTs can be stopped"
            )
        self._stop(mst_id)

    def msts(self) -> list[MST]:
        return list(self._msts)

    def status(self, mst_id: int) -> MSTStatus:
        self._check_id(mst_id)
        return self._status[mst_id]

    def active(self) -> list[int]:
        return [m.id for m in self._msts if self._status[m.id].active]

    def budget(self, mst_id: int) -> int:
        self._check_id(mst_id)
        return self._budget[mst_id]

    def results(self, mst_id: int | None = None) -> list[EpochResult]:
        if mst_id is None:
            return list(self._results)
        self._check_id(mst_id)
        return [r for r in self._results if r.mst_id == mst_id]

    # ------------------------------------------------------------ running

    def run(self, *, n_epochs: int | None = None) -> FakeTrainer:
        """Run until nothing is runnable or in flight; with ``n_epochs``, return after that many
        more evaluated epochs (right after the last one's ``on_epoch_end``), as a driver crash."""
        if not self._started:
            self._started = True
            self.procedure.on_start(self)
            self._feed()
        target = None if n_epochs is None else len(self._results) + n_epochs
        while self._flights:
            if target is not None and len(self._results) >= target:
                return self
            self._finish_next()
            self._feed()
        return self

    def resume(self, procedure: BaseProcedure) -> FakeTrainer:
        """A copy of this trainer's state driven by ``procedure`` (a fresh instance), as a
        driver restarted from its store: ``run`` calls ``procedure.on_start`` first. Epochs in
        flight are kept, so a resumed run can be compared event by event with an
        uninterrupted one."""
        twin = copy.copy(self)
        for name, value in vars(self).items():
            if name not in ("procedure", "objective_fn", "cost"):
                setattr(twin, name, copy.deepcopy(value))
        twin.procedure = procedure
        twin._started = False
        return twin

    def evaluate(
        self, mst_id: int, value: float | Mapping[str, float], *, notify: bool = True
    ) -> Decision:
        """Record the MST's next epoch with this metric value now, off the clock, and (with
        ``notify``) call ``on_epoch_end`` and apply its decision: for tests that script
        results rather than run them."""
        self._check_id(mst_id)
        if not self._status[mst_id].active:
            raise ConfigError(f"MST {mst_id} is {self._status[mst_id].value}: it has no epoch left")
        self._status[mst_id] = MSTStatus.RUNNING
        return self._record(mst_id, self._done[mst_id], value, notify=notify)

    def utilisation(self) -> float:
        """Busy worker time over n_workers x elapsed time (1.0 = no worker ever idle)."""
        if self.time == 0:
            return 0.0
        busy = sum(e.end - e.start for e in self.log)
        return busy / (self._n_workers * self.time)

    def best(self) -> tuple[int, float]:
        """(mst_id, objective) of the best evaluated epoch, by the procedure's objective."""
        if not self._results:
            raise ModelHopperError("no epoch was evaluated; run() the trainer first")
        top = max(self._results, key=lambda r: (self.procedure.objective(r.metrics), -r.mst_id))
        return top.mst_id, self.procedure.objective(top.metrics)

    # ------------------------------------------------------------ internals

    def _check_id(self, mst_id: int) -> None:
        if not isinstance(mst_id, int) or not 0 <= mst_id < len(self._msts):
            raise ConfigError(f"no MST has id {mst_id!r}; ids are 0..{len(self._msts) - 1}")

    def _free_workers(self) -> list[int]:
        busy = {f.worker for f in self._flights}
        return [w for w in range(self._n_workers) if w not in busy]

    def _runnable(self) -> list[int]:
        flying = {f.mst_id for f in self._flights}
        return [
            m.id
            for m in self._msts
            if self._status[m.id].active
            and self._done[m.id] < self._budget[m.id]
            and m.id not in flying
        ]

    def _assign(self) -> None:
        for worker, mst_id in zip(self._free_workers(), self._runnable(), strict=False):
            if len(self.log) >= self.max_epochs:
                raise ModelHopperError(
                    f"the procedure ran more than max_epochs={self.max_epochs} epochs; it may "
                    "never finish: check its stopping rule, or raise max_epochs"
                )
            mst = self._msts[mst_id]
            seconds = float(self.cost(mst.params))
            if not (math.isfinite(seconds) and seconds > 0):
                raise ConfigError(f"cost(params) must be a finite number > 0, got {seconds!r}")
            self._status[mst_id] = MSTStatus.RUNNING
            epoch = self._done[mst_id]
            self._flights.append(_Flight(self.time + seconds, worker, mst_id, epoch, self.time))

    def _feed(self) -> None:
        self._assign()
        idle = self._free_workers()
        if idle:
            self.idle_calls.append((self.time, len(idle)))
            self.procedure.on_idle(self, len(idle))
            self._assign()

    def _finish_next(self) -> None:
        flight = min(self._flights, key=lambda f: (f.end, f.worker))
        self._flights.remove(flight)
        self.time = flight.end
        mst_id = flight.mst_id
        live = not self._status[mst_id].ended
        self.log.append(
            EpochLog(flight.start, flight.end, flight.worker, mst_id, flight.epoch, live)
        )
        if not live:
            return
        params = copy.deepcopy(self._msts[mst_id].params)
        try:
            value = self.objective_fn(params, flight.epoch)
        except MSTFailedError as e:
            self._status[mst_id] = MSTStatus.FAILED
            self.errors[mst_id] = str(e)
            return
        self._record(mst_id, flight.epoch, value)

    def _record(
        self, mst_id: int, epoch: int, value: float | Mapping[str, float], *, notify: bool = True
    ) -> Decision:
        metrics = (
            dict(value) if isinstance(value, Mapping) else {self.procedure.metric: float(value)}
        )
        result = EpochResult(mst_id, epoch, metrics)
        self._results.append(result)
        self._done[mst_id] += 1
        decision = Decision.CONTINUE
        if notify:  # as the driver: the status still says running during the hook
            decision = Decision(self.procedure.on_epoch_end(self, result))
        if self._status[mst_id].ended:
            return decision  # the procedure stopped it via stop()
        if decision is Decision.STOP and self._done[mst_id] < self._budget[mst_id]:
            self._stop(mst_id)
        elif self._done[mst_id] >= self._budget[mst_id]:
            self._status[mst_id] = MSTStatus.COMPLETED
        return decision

    def _stop(self, mst_id: int) -> None:
        self.calls.append(("stop", mst_id, None))
        self._status[mst_id] = MSTStatus.STOPPED
        self.stopped_at[mst_id] = self.time
