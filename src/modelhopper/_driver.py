"""The driver loop: ask the scheduler for visits, hand them to the executor, record every result.

When visits finish, the freed workers get their next visits first; only then
are the finished visits checkpointed and recorded in the store (steps,
completed epochs, MST status, checkpoint reference), all those that finished
together in one transaction, while the workers compute. An MST whose visit
ended an epoch gets no further visit until the procedure has decided on that
epoch. Under a procedure that decides on epochs (ASHA, PBT...), it is asked
only once the visit is committed, and its decision, the decision's effects (MSTs
added, budgets raised, statuses) and a marker per epoch commit together in a
second transaction: a resumed run asks again exactly about the committed epochs
without a marker, so it neither loses nor repeats a decision. A crash of the
driver loses at most the visits in flight and those whose results arrived but
were not yet committed; ``resume`` rebuilds this loop's state from the store and
the checkpoints alone.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from modelhopper._progress import ProgressBar
from modelhopper._ranking import better
from modelhopper.errors import AllMSTsFailedError, ConfigError
from modelhopper.estimator import SKIPPED, PassResult
from modelhopper.executors import (
    BaseExecutor,
    State,
    VisitResult,
    VisitTask,
    state_bytes,
    state_nbytes,
)
from modelhopper.procedures._base import MST, BaseProcedure, Decision, EpochResult
from modelhopper.result import MSTStatus, RunStats
from modelhopper.scheduling import MOPScheduler, Step, StepKind, Visit, makespan_lower_bound
from modelhopper.store import (
    BaseStore,
    EpochRecord,
    EventKind,
    MSTRecord,
    StepRecord,
    VisitRecord,
)
from modelhopper.store._checkpoints import CheckpointManager, Retention

__all__ = [
    "Driver",
    "candidate_steps",
    "COMMAND_POLL_SECONDS",
    "DECISION_MARKERS",
    "FAULTS",
    "RECORD_INTERVAL_SECONDS",
]

COMMAND_POLL_SECONDS = 0.1  # how often the loop looks for human-in-the-loop commands
# Results of short visits wait at most this long to share one store transaction.
RECORD_INTERVAL_SECONDS = 0.1
# The key a run's spec holds (True) when its decisions carry EPOCH_DECIDED markers
# (see the module): runs recorded before have none, so resume asks them nothing again.
DECISION_MARKERS = "decision_markers"
# Fault injection, for tests only: a callback run at a named point of the loop
# ("visits_committed": after a record's visits commit, before their decisions).
FAULTS: dict[str, Callable[[], None]] = {}


_STATUS_EVENT = {
    MSTStatus.STOPPED: EventKind.MST_STOPPED,
    MSTStatus.COMPLETED: EventKind.MST_COMPLETED,
}


def candidate_steps(epoch: int, n_shards: int) -> int:
    """Steps done when the state that epoch ``epoch`` evaluates was checkpointed.

    An epoch is 2p steps (p train, p eval); its last train step shares a visit
    with its first eval step, so the checkpoint after that visit holds it.
    """
    return 2 * n_shards * epoch + n_shards + 1


@dataclass
class _Epoch:
    """Per-shard results of one MST's epoch until every validation shard has reported."""

    train: dict[int, PassResult] = field(default_factory=dict)
    evaluation: dict[int, PassResult] = field(default_factory=dict)
    train_order: dict[int, int] = field(default_factory=dict)  # position -> shard
    eval_order: dict[int, int] = field(default_factory=dict)

    def add(self, step: Step, result: PassResult) -> None:
        if step.kind is StepKind.TRAIN:
            self.train[step.shard] = result
            self.train_order[step.position] = step.shard
        else:
            self.evaluation[step.shard] = result
            self.eval_order[step.position] = step.shard


def _aggregate(prefix: str, parts: Mapping[int, PassResult]) -> dict[str, float]:
    """Example-weighted means over shards, summed in shard order so results are exact."""
    ordered = [parts[s] for s in sorted(parts)]
    n = sum(p.n for p in ordered)
    metrics = {f"{prefix}_loss": sum(p.loss_sum for p in ordered) / n}
    for name in ordered[0].metric_sums:
        if name != SKIPPED:
            metrics[f"{prefix}_{name}"] = sum(p.metric_sums[name] for p in ordered) / n
    skipped = sum(p.metric_sums.get(SKIPPED, 0.0) for p in ordered)
    if skipped:  # records left out as unreadable (on_bad_record="skip"): a count
        metrics[f"{prefix}_{SKIPPED}"] = skipped
    return metrics


@dataclass
class _Finished:
    """A visit whose result arrived and is accounted for, but not yet recorded in the store."""

    visit: Visit
    result: VisitResult
    state: State
    epochs: list[EpochRecord]  # the epochs this visit completed
    moved: int  # state bytes the visit was sent (0: no hop)
    arrived: float  # time.monotonic() when its result was accounted for
    # When its steps finished (their result arrived), recorded as such: the commit may
    # come up to RECORD_INTERVAL_SECONDS later, and "finished" must not mean "committed".
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class _MSTProgress:
    """What the driver tracks per MST; all of it can be rebuilt from the store."""

    mst: MST
    status: MSTStatus
    n_steps: int = 0  # steps recorded
    latest: str | None = None  # checkpoint after the last recorded visit
    best: str | None = None
    best_value: float | None = None
    epochs_done: int = 0


class Driver:
    def __init__(
        self,
        *,
        name: str,
        procedure: BaseProcedure,
        executor: BaseExecutor,
        store: BaseStore,
        checkpoints: CheckpointManager,
        n_workers: int,
        progress: bool = False,
    ) -> None:
        self.name = name
        self.procedure = procedure
        # A procedure that never stops an MST early (grid, random search) decides nothing
        # from an epoch's metrics: its MSTs go on without waiting for the epoch's record.
        self._decides = getattr(procedure, "decides_on_epochs", lambda: True)()
        self.executor = executor
        self.store = store
        self.checkpoints = checkpoints
        self.n_workers = n_workers
        self.progress = progress
        self.scheduler = MOPScheduler(n_workers, policy=procedure.policy, seed=procedure.seed)
        self.msts_by_id: dict[int, _MSTProgress] = {}
        self.warm_from: dict[int, int] = {}  # MST -> parent whose weights it starts from
        self.evaluated: list[EpochResult] = []  # every epoch result, in evaluation order
        self.epochs: dict[tuple[int, int], _Epoch] = {}
        self.states: dict[int, State] = {}  # bytes, or a reference the executor holds
        self.last_mst_on: dict[int, int] = {}  # worker -> MST of its last visit
        self.last_worker_of: dict[int, int] = {}  # MST -> worker of its last visit
        self.in_flight: dict[int, Visit] = {}
        self.compute_seconds = 0.0
        self.record_seconds = 0.0  # driver time spent checkpointing and writing the store
        self.dispatch_seconds = 0.0  # driver time between results and the next visits sent
        self.started: list[int] = []  # MSTs whose first visit was sent, not yet marked running
        self.unrecorded: list[_Finished] = []  # accounted for, not yet in the store
        self._commands_due = 0.0  # when to look for human-in-the-loop commands next
        self.n_steps_done = 0
        self.n_visits = self.n_hops = self.hop_bytes = 0
        self.moved_bytes: dict[int, int] = {}  # worker -> state bytes its visit in flight got
        self.work: dict[tuple[int, int], float] = {}

    # -- building the state ------------------------------------------------
    # -- the Trainer interface procedures and commands act through -----------
    def add(
        self,
        params: Mapping[str, Any],
        *,
        epochs: int,
        parent: int | None = None,
        warm_start: bool = False,
        priority: int = 0,
    ) -> MST:
        """Start a new MST (recorded in the store before it can run)."""
        checked = self.procedure.space.validate_point(params)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
        if parent is not None:
            self._progress(parent)
        if warm_start and parent is None:
            raise ConfigError("warm_start=True needs the parent MST to start from")
        mst = self.procedure.make_mst(max(self.msts_by_id, default=-1) + 1, checked, parent)
        self.store.add_msts(self.name, [MSTRecord(
            mst_id=mst.id, params=mst.params, seed=mst.seed, status=MSTStatus.PENDING.value,
            parent=parent, warm_start=warm_start, priority=priority, n_epochs=epochs,
        )])  # fmt: skip
        self.msts_by_id[mst.id] = _MSTProgress(mst, MSTStatus.PENDING)
        if warm_start:
            self.warm_from[mst.id] = parent  # type: ignore[assignment]
        self.scheduler.add_mst(mst.id, epochs, priority=priority)
        return mst

    def extend(self, mst_id: int, epochs: int) -> None:
        progress = self._progress(mst_id)
        if progress.status in (MSTStatus.FAILED, MSTStatus.STOPPED):
            raise ConfigError(
                f"MST {mst_id} is {progress.status.value}; resume it before extending it"
            )
        if epochs <= self.scheduler.n_epochs(mst_id):
            return
        self.scheduler.extend(mst_id, epochs)
        fields: dict[str, Any] = {"n_epochs": epochs}
        if progress.status is MSTStatus.COMPLETED:
            progress.status = fields["status"] = MSTStatus.RUNNING
        self.store.update_mst(self.name, mst_id, **fields)

    def stop(self, mst_id: int) -> None:
        progress = self._progress(mst_id)
        if progress.status in (MSTStatus.COMPLETED, MSTStatus.FAILED, MSTStatus.STOPPED):
            raise ConfigError(
                f"MST {mst_id} is already {progress.status.value}; only pending or running "
                "MSTs can be stopped"
            )
        self.scheduler.stop(mst_id)
        progress.status = MSTStatus.STOPPED
        self.store.update_mst(self.name, mst_id, status=MSTStatus.STOPPED.value)
        self.store.add_event(self.name, EventKind.MST_STOPPED, mst_id=mst_id)

    def resume_mst(self, mst_id: int) -> None:
        """Undo ``stop``: the MST continues with its remaining epochs."""
        progress = self._progress(mst_id)
        if progress.status is not MSTStatus.STOPPED:
            raise ConfigError(
                f"MST {mst_id} is {progress.status.value}, not stopped; only stopped MSTs resume"
            )
        self.scheduler.resume(mst_id)
        done = self.scheduler.remaining_steps(mst_id) == 0
        progress.status = MSTStatus.COMPLETED if done else MSTStatus.RUNNING
        self.store.update_mst(self.name, mst_id, status=progress.status.value)

    def set_priority(self, mst_id: int, priority: int) -> None:
        self._progress(mst_id)
        self.scheduler.set_priority(mst_id, priority)
        self.store.update_mst(self.name, mst_id, priority=priority)

    def msts(self) -> list[MST]:  # type: ignore[override]
        return [self.msts_by_id[i].mst for i in sorted(self.msts_by_id)]

    def status(self, mst_id: int) -> str:
        return self._progress(mst_id).status.value

    def budget(self, mst_id: int) -> int:
        self._progress(mst_id)
        return self.scheduler.n_epochs(mst_id)

    def results(self, mst_id: int | None = None) -> list[EpochResult]:
        return [r for r in self.evaluated if mst_id is None or r.mst_id == mst_id]

    def _progress(self, mst_id: int) -> _MSTProgress:
        try:
            return self.msts_by_id[mst_id]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown MST {mst_id!r}; this run has MSTs {sorted(self.msts_by_id)}"
            ) from None

    def restore(self, records: list[MSTRecord]) -> None:
        """Rebuild scheduler, metrics and states from the store (resuming a run)."""
        steps_by_mst: dict[int, list[StepRecord]] = {}
        for step in self.store.list_steps(self.name):
            steps_by_mst.setdefault(step.mst_id, []).append(step)
        stored = self.store.list_epochs(self.name)
        epochs_done = {(e.mst_id, e.epoch): e for e in stored}
        for e in sorted(stored, key=lambda e: (e.finished_at is None, e.finished_at)):
            self.evaluated.append(EpochResult(e.mst_id, e.epoch, e.metrics))
        for record in records:
            mst = MST(record.mst_id, record.params, record.seed, record.parent)
            done = steps_by_mst.get(mst.id, [])
            progress = _MSTProgress(
                mst, MSTStatus(record.status), len(done), record.checkpoint, record.best_checkpoint
            )
            self.msts_by_id[mst.id] = progress
            self.scheduler.add_mst(mst.id, record.n_epochs, priority=record.priority)
            self.scheduler.mark_done(mst.id, len(done))
            if record.warm_start and record.parent is not None:
                self.warm_from[mst.id] = record.parent
            if progress.status in (MSTStatus.FAILED, MSTStatus.STOPPED):
                self.scheduler.stop(mst.id)
            if record.checkpoint is not None:
                self.states[mst.id] = self.checkpoints.read(record.checkpoint)
            for step in done:
                if (mst.id, step.epoch) not in epochs_done:
                    self._epoch(mst.id, step.epoch).add(*_from_record(step))
            for (mst_id, _), epoch in sorted(epochs_done.items()):
                if mst_id == mst.id:
                    self._track_best(progress, epoch.metrics)
                    progress.epochs_done += 1

    def _epoch(self, mst_id: int, epoch: int) -> _Epoch:
        return self.epochs.setdefault((mst_id, epoch), _Epoch())

    # -- the loop ------------------------------------------------------------
    def run(self) -> RunStats:
        started = time.perf_counter()
        total = sum(self.scheduler.remaining_steps(i) for i in self.msts_by_id)
        with ProgressBar(self.progress, total) as self.bar:
            try:
                self._loop()
            except BaseException:  # whatever stops the loop, what finished is kept
                with contextlib.suppress(Exception):
                    self._record()
                raise
            self._record()
        wall = time.perf_counter() - started
        self._raise_if_all_failed()
        return self._stats(wall)

    def _loop(self) -> None:
        self._dispatch()
        while self.in_flight:
            results = self.executor.wait()
            arrived = time.perf_counter()
            for result in results:
                if (finished := self._accept(result)) is not None:
                    self.unrecorded.append(finished)
            self._assign()  # the freed workers go on before anything is written
            self.dispatch_seconds += time.perf_counter() - arrived
            if self._record_due():
                self._record(serve=True)
                if not self.in_flight:  # the last visits finished while it recorded
                    self._record()  # decide on them before the loop sees no work
            self._dispatch()

    def _record_due(self) -> bool:
        """Record now, or let a few more short visits share one transaction?

        Now when an epoch awaits its decision, when no visit is in flight, when a
        state could be lost with a worker (a Ray object, with its node), or when the
        oldest unrecorded result is RECORD_INTERVAL_SECONDS old.
        """
        if not self.unrecorded:
            return False
        return (
            not self.in_flight
            or any(
                (f.epochs and self._decides) or getattr(f.state, "lost_with_worker", False)
                for f in self.unrecorded
            )
            or time.monotonic() - self.unrecorded[0].arrived >= RECORD_INTERVAL_SECONDS
        )

    def _remaining(self) -> int:
        return sum(self.scheduler.remaining_steps(i) for i in self.msts_by_id) + sum(
            len(v.steps) for v in self.in_flight.values()
        )

    def _dispatch(self) -> None:
        from modelhopper.commands import apply_pending

        now = time.monotonic()
        if now >= self._commands_due:  # a query per visit would cost more than the visit
            self._commands_due = now + COMMAND_POLL_SECONDS
            apply_pending(self)  # human-in-the-loop commands, between visits
        self._assign()
        n_idle = self.n_workers - len(self.in_flight)
        if n_idle:  # let the procedure add or promote MSTs, so workers do not wait
            self.procedure.on_idle(self, n_idle)
            self._assign()
        self._mark_started()

    def _assign(self) -> None:
        idle = [w for w in range(self.n_workers) if w not in self.in_flight]
        for visit in self.scheduler.assign(idle):
            progress = self.msts_by_id[visit.mst_id]
            mst = progress.mst
            fresh = mst.id not in self.states
            state = None
            if not fresh and not self._holds_latest(visit.worker, mst.id):
                state = self.states[mst.id]
                self.n_hops += 1
                self.hop_bytes += state_nbytes(state)
            self.moved_bytes[visit.worker] = state_nbytes(state) if state is not None else 0
            parent = self.warm_from.get(mst.id) if fresh else None
            init = self.states.get(parent) if parent is not None else None
            task = VisitTask(mst.id, mst.params, mst.seed, visit.steps, state, fresh, init)
            self.executor.submit(visit.worker, task)
            self.in_flight[visit.worker] = visit
            self.n_visits += 1
            if progress.status is MSTStatus.PENDING:
                progress.status = MSTStatus.RUNNING
                self.started.append(mst.id)  # written after the dispatch, off the critical path

    def _mark_started(self) -> None:
        for mst_id in self.started:
            self.store.update_mst(self.name, mst_id, status=MSTStatus.RUNNING.value)
        self.started.clear()

    def _holds_latest(self, worker: int, mst_id: int) -> bool:
        """Whether the worker has the MST's latest state in memory, so no hop is needed.

        Both must hold: the MST's last visit ran there (else the worker's copy
        is stale), and the worker ran nothing since (so its cache still has it).
        """
        return self.last_worker_of.get(mst_id) == worker and self.last_mst_on.get(worker) == mst_id

    def _accept(self, result: VisitResult) -> _Finished | None:
        """Account for a finished visit in memory (no I/O); None if it needs no record."""
        visit = self.in_flight.pop(result.worker)
        if result.crashed:
            self._requeue_after_crash(visit, state_lost=result.state_lost)
            return None
        self.last_mst_on[result.worker] = result.mst_id
        self.last_worker_of[result.mst_id] = result.worker
        if result.error is not None or result.state is None:
            self._fail(visit, result)
            return None
        seconds = [o.result.seconds for o in result.outcomes]
        self.scheduler.complete(visit, seconds)
        self.n_steps_done += len(visit.steps)
        self.compute_seconds += sum(seconds)
        key = (visit.mst_id, visit.worker)
        self.work[key] = self.work.get(key, 0.0) + sum(seconds)
        epochs = []
        for outcome in result.outcomes:
            epoch = self._epoch(visit.mst_id, outcome.step.epoch)
            epoch.add(outcome.step, outcome.result)
            if len(epoch.evaluation) == self.n_workers:
                del self.epochs[visit.mst_id, outcome.step.epoch]
                epochs.append(self._epoch_record(visit.mst_id, outcome.step.epoch, epoch))
        if epochs and self._decides:  # no further visit before the procedure has decided
            self.scheduler.hold(visit.mst_id)
        self.states[visit.mst_id] = result.state
        self.bar.update(len(visit.steps), self._remaining())
        moved = self.moved_bytes.pop(visit.worker, 0)  # the dashboard's timeline shows hops
        return _Finished(visit, result, result.state, epochs, moved, time.monotonic())

    def _record(self, *, serve: bool = False) -> None:
        """Checkpoints, decisions, then one store transaction for all unrecorded visits.

        With ``serve``, workers that finish meanwhile get their next visit between
        checkpoint writes: a record takes milliseconds per visit, which a worker
        would otherwise spend waiting (the new results go to the next record).
        """
        finished, self.unrecorded = self.unrecorded, []
        if not finished:
            return
        started = time.perf_counter()
        last_training = {f.visit.mst_id: f for f in finished if _trains(f.visit)}
        records = []
        for f in finished:
            if serve:
                self._serve_finished()
            records.append(self._visit_record(f, f is last_training.get(f.visit.mst_id)))
        if serve:
            self._serve_finished()
        self.store.record_visits(self.name, records)
        pending = [(f.visit.mst_id, f.epochs) for f in finished if f.epochs]
        if self._decides and pending:
            if fault := FAULTS.get("visits_committed"):
                fault()
            self._commit_decisions(pending)
        for mst_id in dict.fromkeys(f.visit.mst_id for f in finished):
            self._prune(self.msts_by_id[mst_id])
        for f in finished:
            if f.epochs and self._decides:
                self.scheduler.unhold(f.visit.mst_id)
        self.record_seconds += time.perf_counter() - started

    def _serve_finished(self) -> None:
        """Accept the visits finished by now (no waiting) and give their workers more."""
        results = self.executor.poll()
        for result in results:
            if (finished := self._accept(result)) is not None:
                self.unrecorded.append(finished)
        if results:
            self._assign()

    def _visit_record(self, finished: _Finished, last_training: bool) -> VisitRecord:
        """Write the visit's checkpoint if needed, ask the procedure about its epochs, build
        its record.

        A checkpoint is written after a visit that trained, unless a later visit of the
        same MST in this transaction supersedes it (and it is not the state an epoch
        evaluates, which may become the best). Evaluation changes no state: after an
        evaluation-only visit the MST's latest checkpoint stays the one before it.
        ``checkpoints="all"`` keeps one after every visit.
        """
        visit, result = finished.visit, finished.result
        progress = self.msts_by_id[visit.mst_id]
        progress.n_steps += len(visit.steps)
        candidate = any(
            s.kind is StepKind.TRAIN and s.position == self.n_workers - 1 for s in visit.steps
        )
        keep_all = self.checkpoints.retention is Retention.ALL
        if progress.latest is None or keep_all or (_trains(visit) and (last_training or candidate)):
            state = state_bytes(finished.state)
            progress.latest = str(self.checkpoints.write(visit.mst_id, progress.n_steps, state))
        steps = [
            _to_record(visit.mst_id, visit.worker, o.step, o.result, finished.finished_at)
            for o in result.outcomes
        ]
        events: list[tuple[EventKind, dict[str, Any]]] = [
            (EventKind.HOPPED, {"worker": visit.worker, "steps": len(visit.steps),
                                "hop": finished.moved > 0, "bytes": finished.moved})
        ]  # fmt: skip
        for record in finished.epochs:
            if self._track_best(progress, record.metrics):
                progress.best = str(self.checkpoints.path(visit.mst_id, self._cand(record)))
            events.append((EventKind.EPOCH_END, {"epoch": record.epoch}))
        progress.epochs_done += len(finished.epochs)
        fields: dict[str, Any] = {"checkpoint": progress.latest, "best_checkpoint": progress.best}
        # A procedure that decides nothing from metrics (grid, random) only completes the
        # MST at its last epoch: that status commits with the visit. Others decide after.
        decision = None
        if finished.epochs and not self._decides:
            decision = self._decide(progress, finished.epochs)
        if decision is not None:
            progress.status = decision
            fields["status"] = decision.value
            events.append((_STATUS_EVENT[decision], {}))
        return VisitRecord(visit.mst_id, steps, finished.epochs, fields, events)

    def _commit_decisions(
        self, pending: list[tuple[int, list[EpochRecord]]], *, replay: bool = False
    ) -> None:
        """Ask the procedure about committed epochs, in order; commit the decisions, their
        effects and one EPOCH_DECIDED marker per epoch in one transaction."""
        if not pending:
            return
        with self.store.batch():
            for mst_id, epochs in pending:
                progress = self.msts_by_id[mst_id]
                decision = self._decide(progress, epochs, replay=replay)
                if decision is not None:
                    progress.status = decision
                    self.store.update_mst(self.name, mst_id, status=decision.value)
                    self.store.add_event(self.name, _STATUS_EVENT[decision], mst_id=mst_id)
                for record in epochs:
                    self.store.add_event(
                        self.name, EventKind.EPOCH_DECIDED, mst_id=mst_id,
                        detail={"epoch": record.epoch},
                    )  # fmt: skip

    def decide_undecided(self) -> None:
        """On resume: ask about the committed epochs whose decision was not committed (the
        driver died between the two), in the order they finished."""
        if not self._decides:
            return
        decided = {
            (e.mst_id, e.detail.get("epoch"))
            for e in self.store.list_events(self.name)
            if e.kind == EventKind.EPOCH_DECIDED
        }
        stored = self.store.list_epochs(self.name)
        epochs = [e for e in stored if (e.mst_id, e.epoch) not in decided]
        epochs.sort(key=lambda e: (e.finished_at is None, e.finished_at, e.mst_id, e.epoch))
        self._commit_decisions([(e.mst_id, [e]) for e in epochs], replay=True)

    def _cand(self, record: EpochRecord) -> int:
        return candidate_steps(record.epoch, self.n_workers)

    def _decide(
        self, progress: _MSTProgress, epochs: list[EpochRecord], *, replay: bool = False
    ) -> MSTStatus | None:
        """Ask the procedure after each completed epoch; return a new final status, if any.
        ``replay``: the epochs are already among ``results()`` (restored on resume)."""
        mst_id = progress.mst.id
        for record in epochs:
            result = EpochResult(mst_id, record.epoch, record.metrics)
            if not replay:
                self.evaluated.append(result)
            decision = self.procedure.on_epoch_end(self, result)
            if progress.status in (MSTStatus.STOPPED, MSTStatus.FAILED):
                return None  # stopped by the procedure (stop()) or a command, or failed
            if decision is Decision.STOP and self.scheduler.remaining_steps(mst_id):
                self.scheduler.stop(mst_id)
                return MSTStatus.STOPPED
        if self.scheduler.remaining_steps(mst_id) == 0:
            return MSTStatus.COMPLETED
        return None

    def _track_best(self, progress: _MSTProgress, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(self.procedure.metric)
        if not better(value, progress.best_value, self.procedure.direction):
            return False
        progress.best_value = value
        return True

    def _prune(self, progress: _MSTProgress) -> None:
        """Delete checkpoints no one needs: keep latest, best, and pending epoch candidates."""
        mst_id = progress.mst.id
        live = {progress.latest, progress.best if self.checkpoints.keeps_best() else None}
        for (owner, epoch), _ in self.epochs.items():
            if owner == mst_id:
                live.add(str(self.checkpoints.path(mst_id, candidate_steps(epoch, self.n_workers))))
        self.checkpoints.prune(mst_id, {p for p in live if p is not None})

    def _epoch_record(self, mst_id: int, number: int, epoch: _Epoch) -> EpochRecord:
        metrics = {**_aggregate("train", epoch.train), **_aggregate("val", epoch.evaluation)}
        return EpochRecord(
            mst_id=mst_id,
            epoch=number,
            metrics=metrics,
            train_order=[epoch.train_order[i] for i in sorted(epoch.train_order)],
            eval_order=[epoch.eval_order[i] for i in sorted(epoch.eval_order)],
            train_seconds=sum(p.seconds for p in epoch.train.values()),
            eval_seconds=sum(p.seconds for p in epoch.evaluation.values()),
        )

    def _requeue_after_crash(self, visit: Visit, *, state_lost: bool = False) -> None:
        """The worker died mid-visit and was replaced: run the visit again from the last state."""
        self._record()  # in order: what finished before the crash first
        if state_lost:  # it lived on a node that died: fall back to the checkpoints
            parent = self.warm_from.get(visit.mst_id)
            for mst_id in (visit.mst_id,) if parent is None else (visit.mst_id, parent):
                latest = self.msts_by_id[mst_id].latest
                if latest is not None:
                    self.states[mst_id] = self.checkpoints.read(latest)
        self.scheduler.requeue(visit)
        self.last_mst_on.pop(visit.worker, None)  # the new process holds no state
        self.store.add_event(
            self.name, EventKind.WORKER_RESTARTED, mst_id=visit.mst_id, worker=visit.worker,
            detail={"steps": len(visit.steps)},
        )  # fmt: skip

    def _fail(self, visit: Visit, result: VisitResult) -> None:
        self._record()  # in order: the MST's earlier visits first
        self.scheduler.fail(visit)
        progress = self.msts_by_id[visit.mst_id]
        progress.status = MSTStatus.FAILED
        self.store.update_mst(
            self.name, visit.mst_id, status=MSTStatus.FAILED.value, error=result.error,
            traceback=result.traceback,
        )  # fmt: skip
        self.store.add_event(
            self.name, EventKind.MST_FAILED, mst_id=visit.mst_id, worker=visit.worker,
            detail={"error": result.error},
        )  # fmt: skip
        self.bar.update(0, self._remaining())
        warnings.warn(
            f"MST {visit.mst_id} {progress.mst.params} failed: {result.error}; the others go on",
            stacklevel=2,
        )

    def _raise_if_all_failed(self) -> None:
        failed = [p for p in self.msts_by_id.values() if p.status is MSTStatus.FAILED]
        if failed and len(failed) == len(self.msts_by_id):
            errors = {r.mst_id: r.error for r in self.store.list_msts(self.name)}
            reasons = sorted({errors.get(p.mst.id) or "unknown" for p in failed})
            raise AllMSTsFailedError(
                f"all {len(failed)} MSTs failed ({len(reasons)} distinct reasons): "
                + "; ".join(reasons[:5])
            )

    def _stats(self, wall: float) -> RunStats:
        rows = {mst: i for i, mst in enumerate(sorted({m for m, _ in self.work}))}
        matrix = np.zeros((len(rows), self.n_workers))
        for (mst, worker), seconds in self.work.items():
            matrix[rows[mst], worker] += seconds
        return RunStats(
            n_workers=self.n_workers,
            wall_seconds=wall,
            total_seconds=wall,
            compute_seconds=self.compute_seconds,
            n_visits=self.n_visits,
            n_hops=self.n_hops,
            hop_bytes=self.hop_bytes,
            resident_shard_bytes=tuple(self.executor.resident_shard_bytes),
            dataset_bytes=0,
            lower_bound_seconds=makespan_lower_bound(matrix),
            n_steps=self.n_steps_done,
            record_seconds=self.record_seconds,
            dispatch_seconds=self.dispatch_seconds,
        )


def _trains(visit: Visit) -> bool:
    return any(s.kind is StepKind.TRAIN for s in visit.steps)


def _to_record(
    mst_id: int, worker: int, step: Step, result: PassResult, finished_at: datetime | None = None
) -> StepRecord:
    return StepRecord(
        mst_id=mst_id,
        epoch=step.epoch,
        kind=step.kind.value,
        shard=step.shard,
        position=step.position,
        worker=worker,
        n=result.n,
        loss_sum=result.loss_sum,
        metric_sums=dict(result.metric_sums),
        seconds=result.seconds,
        finished_at=finished_at,
    )


def _from_record(record: StepRecord) -> tuple[Step, PassResult]:
    step = Step(StepKind(record.kind), record.epoch, record.shard, record.position)
    return step, PassResult(record.n, record.loss_sum, dict(record.metric_sums), record.seconds)
