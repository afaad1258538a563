"""The driver loop: ask the scheduler for visits, hand them to the executor, record every result.

When visits finish, the freed workers get their next visits first; only then
are the finished visits checkpointed and recorded in the store (steps,
completed epochs, MST status, checkpoint reference; ``_recording``), all those
that finished together in one transaction, while the workers compute. An MST
whose visit ended an epoch gets no further visit until the procedure has
decided on that epoch. Under a procedure that decides on epochs (ASHA, PBT...),
it is asked only once the visit is committed, and its decision, the decision's
effects (MSTs added, budgets raised, statuses) and a marker per epoch commit
together in a second transaction: a resumed run asks again exactly about the
committed epochs without a marker, so it neither loses nor repeats a decision. A
crash of the driver loses at most the visits in flight and those whose results
arrived but were not yet committed; ``restore`` rebuilds this loop's state from
the store and the checkpoints alone.

The driver knows procedures only through the vocabulary's ``Procedure``
protocol; procedures and human-in-the-loop commands act on it through its small
public interface (``Trainer`` and ``commands.Steerable``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelhopper._checks import check_int
from modelhopper._progress import ProgressBar
from modelhopper._recording import FinishedVisit, Recorder, step_of
from modelhopper._vocabulary import (
    MST,
    Decision,
    EpochResult,
    MSTStatus,
    Procedure,
    RunStats,
    Step,
)
from modelhopper.commands import apply_pending
from modelhopper.errors import AllMSTsFailedError, ConfigError, ExecutorError
from modelhopper.executors import (
    GROUP_UNSUPPORTED,
    BaseExecutor,
    GroupSpec,
    State,
    StateLostError,
    StateSource,
    VisitResult,
    VisitTask,
    state_nbytes,
)
from modelhopper.scheduling import (
    Hybrid,
    MOPScheduler,
    PoolStep,
    TrainOrder,
    Visit,
    check_n_shards,
    home_holdings,
    makespan_lower_bound,
    plan_order,
    plan_pool_change,
    take_pool_step,
    weighted_holdings,
)
from modelhopper.store import BaseStore, EpochRecord, EventKind, MSTRecord, StepRecord
from modelhopper.store._checkpoints import CheckpointManager

__all__ = [
    "COMMAND_POLL_SECONDS",
    "DECISION_MARKERS",
    "FAULTS",
    "RECORD_INTERVAL_SECONDS",
    "Driver",
]

COMMAND_POLL_SECONDS = 0.1  # how often the loop looks for human-in-the-loop commands
POOL_POLL_SECONDS = 1.0  # how often it asks the executor whether its pool changed
# Shards move to match measured worker speeds only when the slowest worker's share of an
# epoch would shrink to this fraction or less (noise in the timings moves nothing).
REBALANCE_GAIN = 0.8
# Results of short visits wait at most this long to share one store transaction.
RECORD_INTERVAL_SECONDS = 0.1
# A procedure that decides nothing from an epoch's metrics lets a worker holding every
# shard run an MST's next epochs in the same visit while the visit is estimated to last
# less than this: one fixed cost per visit instead of one per epoch. Short enough that
# commands, progress and the work a crash can lose stay within a fraction of a second.
CHAIN_SECONDS = 0.1
# The key a run's spec holds (True) when its decisions carry EPOCH_DECIDED markers
# (see the module): runs recorded before have none, so resume asks them nothing again.
DECISION_MARKERS = "decision_markers"
# Fault injection, for tests only: a callback run at a named point of the loop
# ("visits_committed": after a record's visits commit, before their decisions;
# "record_committed": after every record's commit).
FAULTS: dict[str, Callable[[], None]] = {}

_STATUS_EVENT = {
    MSTStatus.STOPPED: EventKind.MST_STOPPED,
    MSTStatus.COMPLETED: EventKind.MST_COMPLETED,
}


@dataclass
class _Tracked:
    """An MST and its status, as the loop knows them (rebuilt from the store on resume)."""

    mst: MST
    status: MSTStatus


class Driver:
    """Runs a procedure's MSTs on an executor's workers with MOP, recording every result."""

    def __init__(
        self,
        *,
        name: str,
        procedure: Procedure,
        executor: BaseExecutor,
        store: BaseStore,
        checkpoints: CheckpointManager,
        n_workers: int,
        progress: bool = False,
        holdings: Sequence[Sequence[int]] | None = None,
        n_shards: int | None = None,
    ) -> None:
        """``n_shards``: how many shards the data is cut into (default: one per worker);
        ``holdings[w]``: the shards worker ``w`` holds (default: its own only)."""
        n_shards = check_n_shards(n_shards, n_workers)
        self._name = name
        self._procedure = procedure
        # A procedure that never stops an MST early (grid, random search) decides nothing
        # from an epoch's metrics: its MSTs go on without waiting for the epoch's record.
        self._decides = procedure.decides_on_epochs()
        self._executor = executor
        self._store = store
        self._recorder = Recorder(
            name=name, store=store, checkpoints=checkpoints, n_shards=n_shards,
            metric=procedure.metric, direction=procedure.direction,
        )  # fmt: skip
        self._show_progress = progress
        self._bar = ProgressBar(False, 0)
        self._scheduler = MOPScheduler(
            n_workers, policy=procedure.policy, seed=procedure.seed, holdings=holdings,
            chain_seconds=0.0 if self._decides else CHAIN_SECONDS, n_shards=n_shards,
            train_order=getattr(procedure, "train_order", "fixed"),  # runs saved before it
            hybrid=getattr(procedure, "hybrid", "off"),
            shared_validation=executor.shared_validation,
        )  # fmt: skip
        # Workers joining and leaving (elastic executors): who is in the pool, who owns which
        # shards once the pending re-homing steps are taken, and those steps, in order.
        self._pool = list(range(n_workers))
        self._leaving: set[int] = set()
        self._homes = dict(enumerate(map(frozenset, home_holdings(n_workers, n_shards))))
        self._target = dict(enumerate(self._scheduler.holdings()))
        self._pool_steps: deque[PoolStep] = deque()
        self._peak_workers = n_workers
        self._msts: dict[int, _Tracked] = {}
        self._in_order: list[MST] = []  # msts(), kept: a procedure reads it per decision
        self._warm_from: dict[int, int] = {}  # MST -> parent whose weights it starts from
        self._evaluated: list[EpochResult] = []  # every epoch result, in evaluation order
        self._states: dict[int, State] = {}  # bytes, or a reference the executor holds
        self._last_mst_on: dict[int, int] = {}  # worker -> MST of its last visit
        self._last_worker_of: dict[int, int] = {}  # MST -> worker of its last visit
        self._in_flight: dict[int, Visit] = {}
        # Group epochs in flight (hybrid): their rendezvous, and the members' results so far.
        self._rendezvous: dict[int, str] = {}
        self._members_done: dict[int, list[tuple[Visit, VisitResult]]] = {}
        self._moved_bytes: dict[int, int] = {}  # worker -> state bytes its visit in flight got
        self._started: list[int] = []  # MSTs whose first visit was sent, not yet marked running
        self._unrecorded: list[FinishedVisit] = []  # accounted for, not yet in the store
        self._urgent_unrecorded = False  # one of them makes a record due now
        self._recording = False  # inside _record: crashes and failures wait for its end
        self._held_back: list[tuple[Visit, VisitResult]] = []  # those, in arrival order
        self._commands_due = 0.0  # when to look for human-in-the-loop commands next
        self._pool_due = 0.0  # when to ask the executor whether its pool changed next
        # MSTs whose newest state was lost before it was saved, to train again from their
        # last checkpoint once their visit in flight ends (_roll_back), with why.
        self._rolling_back: dict[int, tuple[int, str]] = {}
        self._work: dict[tuple[int, int], float] = {}  # (MST, worker) -> compute seconds
        self._compute_seconds = self._record_seconds = self._dispatch_seconds = 0.0
        self._busy_seconds = 0.0  # the workers' seconds in visits (RunStats.busy_seconds)
        self._n_steps = self._n_visits = self._n_hops = self._hop_bytes = 0

    # -- the Trainer interface procedures act through ------------------------------------
    @property
    def n_workers(self) -> int:
        """The workers in the pool now (not counting those leaving)."""
        return len(self._pool)

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
        checked = self._procedure.space.validate_point(params)
        check_int("epochs", epochs)
        if parent is not None:
            self._tracked(parent)
        if warm_start and parent is None:
            raise ConfigError("warm_start=True needs the parent MST to start from")
        mst = self._procedure.make_mst(self._next_mst_id(), checked, parent)
        self._store.add_msts(self._name, [MSTRecord(
            mst_id=mst.id, params=mst.params, seed=mst.seed, status=MSTStatus.PENDING,
            parent=parent, warm_start=warm_start, priority=priority, n_epochs=epochs,
        )])  # fmt: skip
        self._msts[mst.id] = _Tracked(mst, MSTStatus.PENDING)
        self._in_order.append(mst)  # ids only grow (_next_mst_id)
        self._recorder.track(mst.id)
        if warm_start:
            self._warm_from[mst.id] = parent  # type: ignore[assignment]
        self._scheduler.add_mst(mst.id, epochs, priority=priority)
        return mst

    def extend(self, mst_id: int, epochs: int) -> None:
        tracked = self._tracked(mst_id)
        if tracked.status.ended:
            raise ConfigError(
                f"MST {mst_id} is {tracked.status.value}; resume it before extending it"
            )
        if epochs <= self._scheduler.n_epochs(mst_id):
            return
        self._scheduler.extend(mst_id, epochs)
        fields: dict[str, Any] = {"n_epochs": epochs}
        if tracked.status is MSTStatus.COMPLETED:
            tracked.status = fields["status"] = MSTStatus.RUNNING
        self._store.update_mst(self._name, mst_id, **fields)

    def stop(self, mst_id: int) -> None:
        tracked = self._tracked(mst_id)
        if not tracked.status.active:
            raise ConfigError(
                f"MST {mst_id} is already {tracked.status.value}; only pending or running "
                "MSTs can be stopped"
            )
        self._scheduler.stop(mst_id)
        tracked.status = MSTStatus.STOPPED
        self._store.update_mst(self._name, mst_id, status=MSTStatus.STOPPED)
        self._store.add_event(self._name, EventKind.MST_STOPPED, mst_id=mst_id)

    def msts(self) -> list[MST]:
        return list(self._in_order)

    def status(self, mst_id: int) -> MSTStatus:
        return self._tracked(mst_id).status

    def active(self) -> list[int]:
        return [mst_id for mst_id, tracked in self._msts.items() if tracked.status.active]

    def budget(self, mst_id: int) -> int:
        self._tracked(mst_id)
        return self._scheduler.n_epochs(mst_id)

    def results(self, mst_id: int | None = None) -> list[EpochResult]:
        if mst_id is None:
            return list(self._evaluated)
        return [r for r in self._evaluated if r.mst_id == mst_id]

    # -- what human-in-the-loop commands add to it (commands.Steerable) -------------------
    @property
    def default_epochs(self) -> int:
        return self._procedure.epochs

    def resume_mst(self, mst_id: int) -> None:
        """Undo ``stop``: the MST continues with its remaining epochs."""
        tracked = self._tracked(mst_id)
        if tracked.status is not MSTStatus.STOPPED:
            raise ConfigError(
                f"MST {mst_id} is {tracked.status.value}, not stopped; only stopped MSTs resume"
            )
        self._scheduler.resume(mst_id)
        done = self._scheduler.remaining_steps(mst_id) == 0
        tracked.status = MSTStatus.COMPLETED if done else MSTStatus.RUNNING
        self._store.update_mst(self._name, mst_id, status=tracked.status)

    def set_priority(self, mst_id: int, priority: int) -> None:
        self._tracked(mst_id)
        self._scheduler.set_priority(mst_id, priority)
        self._store.update_mst(self._name, mst_id, priority=priority)

    # -- workers joining and leaving -----------------------------------------------------
    def add_workers(self, n: int) -> list[int]:
        """Start ``n`` more workers and re-home shards so that all share the work."""
        check_int("n", n, example="add_workers(1)")
        self._refuse_inelastic()
        new = list(range(self._scheduler.n_workers, self._scheduler.n_workers + n))
        self._change_pool([*self._pool, *new])
        return new

    def remove_worker(self, worker: int) -> None:
        """``worker`` leaves once its visit ends; its shards move to the others first."""
        self._refuse_inelastic()
        if worker not in self._pool:
            raise ConfigError(f"worker {worker!r} is not in the pool; its workers are {self._pool}")
        if len(self._pool) == 1:
            raise ConfigError(f"worker {worker} is the last one; a run needs at least one")
        self._change_pool([w for w in self._pool if w != worker])

    def _follow_pool(self) -> None:
        """Workers the executor lost for good leave the run (their shards re-homed), and
        room that appeared gets workers (``BaseExecutor.pool_changes``)."""
        changes = self._executor.pool_changes()
        for worker in changes.lost:
            if worker not in self._pool:
                continue
            if len(self._pool) == 1:
                raise ExecutorError(
                    f"worker {worker}, the last of the run, was lost with its node; the run "
                    "can resume (modelhopper resume) once the cluster has room for a worker"
                )
            self._change_pool([w for w in self._pool if w != worker], cause="lost")
        if changes.add:
            first = self._scheduler.n_workers
            self._change_pool([*self._pool, *range(first, first + changes.add)], cause="joined")

    def _rebalance(self) -> None:
        """With an executor that rebalances (``rebalance=True``): once every worker has
        timed steps, give each a share of the shards in proportion to its measured speed
        (``weighted_holdings``), if that shortens the slowest worker's part of an epoch
        enough; the plan does not change, only who owns which shards."""
        executor = self._executor
        if not (executor.rebalance and executor.elastic) or self._pool_steps or self._leaving:
            return
        speeds = self._scheduler.worker_speeds(self._pool)
        n_shards = self._scheduler.n_shards
        if speeds is None or n_shards <= len(self._pool):
            return
        counts = [len(owned) for owned in weighted_holdings(speeds, n_shards)]
        shares = dict(zip(self._pool, counts, strict=True))
        now = max(len(self._homes[w]) / s for w, s in zip(self._pool, speeds, strict=True))
        then = max(shares[w] / s for w, s in zip(self._pool, speeds, strict=True))
        if then <= REBALANCE_GAIN * now:
            self._change_pool(list(self._pool), cause="rebalanced", shares=shares)
        self._scheduler.reset_worker_speeds()

    def _refuse_inelastic(self) -> None:
        if not self._executor.elastic:
            raise self._executor._not_elastic()

    def _change_pool(
        self, pool: list[int], cause: str = "command", shares: dict[int, int] | None = None
    ) -> None:
        """Move to ``pool`` (``scheduling.plan_pool_change``): joiners start now, holding
        their shards; the other steps are taken as their workers come free. The plan of
        every MST is unchanged: only who runs its steps."""
        change = plan_pool_change(
            self._homes, self._target, pool, self._executor.replication(len(pool)), shares
        )
        for worker in change.joiners:
            held, home = sorted(change.target[worker]), sorted(change.homes[worker])
            number = self._executor.add_worker(held, home)
            if number != self._scheduler.add_worker(held) or number != worker:
                raise ConfigError(f"the executor numbered its new worker {number}, not {worker}")
        leavers = [w for w in self._pool if w not in pool]
        self._pool_steps.extend(change.steps)
        self._homes, self._target = change.homes, change.target
        self._pool, self._peak_workers = pool, max(self._peak_workers, len(pool))
        self._leaving.update(leavers)
        self._store.add_event(self._name, EventKind.WORKERS_CHANGED, detail={
            "workers": pool, "joined": list(change.joiners), "leaving": leavers,
            "homes": {str(w): sorted(s) for w, s in change.homes.items()}, "cause": cause,
        })  # fmt: skip

    def _take_pool_steps(self) -> None:
        """Take the pending steps of pool changes, in order, while their workers are idle."""
        busy = set(self._in_flight) | {visit.worker for visit, _ in self._held_back}
        while self._pool_steps and self._pool_steps[0].worker not in busy:
            take_pool_step(
                self._scheduler, self._pool_steps.popleft(),
                lambda s: self._executor.rehome(s.worker, sorted(s.held), sorted(s.home)),
                self._stop_worker,
            )  # fmt: skip

    def _stop_worker(self, worker: int) -> None:
        self._executor.remove_worker(worker)
        self._leaving.discard(worker)
        self._last_mst_on.pop(worker, None)

    def _tracked(self, mst_id: int) -> _Tracked:
        try:
            return self._msts[mst_id]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown MST {mst_id!r}; this run has MSTs {sorted(self._msts)}"
            ) from None

    # -- resuming ------------------------------------------------------------------------
    def restore(self, records: list[MSTRecord]) -> None:
        """Rebuild scheduler, metrics and states from the store (resuming a run)."""
        steps_by_mst: dict[int, list[StepRecord]] = {}
        for step in self._store.list_steps(self._name):
            steps_by_mst.setdefault(step.mst_id, []).append(step)
        stored = self._store.list_epochs(self._name)
        epochs_by_mst: dict[int, list[EpochRecord]] = {}
        for e in stored:
            epochs_by_mst.setdefault(e.mst_id, []).append(e)
        for e in sorted(stored, key=lambda e: (e.finished_at is None, e.finished_at)):
            self._evaluated.append(EpochResult(e.mst_id, e.epoch, e.metrics))
        for record in records:
            mst = MST(record.mst_id, record.params, record.seed, record.parent)
            done = steps_by_mst.get(mst.id, [])
            self._msts[mst.id] = _Tracked(mst, MSTStatus(record.status))
            self._scheduler.add_mst(mst.id, record.n_epochs, priority=record.priority)
            self._scheduler.mark_done(mst.id, [step_of(record) for record in done])
            if record.warm_start and record.parent is not None:
                self._warm_from[mst.id] = record.parent
            if self._msts[mst.id].status.ended:
                self._scheduler.stop(mst.id)
            self._reload(record, done, epochs_by_mst.get(mst.id, []))
        self._in_order = [self._msts[i].mst for i in sorted(self._msts)]

    def _reload(
        self, record: MSTRecord, steps: list[StepRecord], epochs: list[EpochRecord]
    ) -> None:
        """The MST's record and latest state as the store has them (none: it starts afresh)."""
        self._recorder.restore(
            record.mst_id, latest=record.checkpoint, best=record.best_checkpoint, steps=steps,
            epochs=epochs,
        )  # fmt: skip
        if (state := self._recorder.read_latest(record.mst_id)) is not None:
            self._states[record.mst_id] = state
        else:
            self._states.pop(record.mst_id, None)

    def decide_undecided(self) -> None:
        """On resume: ask about the committed epochs whose decision was not committed (the
        driver died between the two), in the order they finished."""
        if not self._decides:
            return
        decided = {
            (e.mst_id, e.detail.get("epoch"))
            for e in self._store.list_events(self._name)
            if e.kind == EventKind.EPOCH_DECIDED
        }
        stored = self._store.list_epochs(self._name)
        epochs = [e for e in stored if (e.mst_id, e.epoch) not in decided]
        epochs.sort(key=lambda e: (e.finished_at is None, e.finished_at, e.mst_id, e.epoch))
        self._commit_decisions([(e.mst_id, [e]) for e in epochs], replay=True)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> RunStats:
        """Run every MST to the end of its budget (or its stop); the run's figures."""
        started = time.perf_counter()
        total = sum(self._scheduler.remaining_steps(i) for i in self._msts)
        with ProgressBar(self._show_progress, total) as self._bar:
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
        while self._in_flight or self._last_look_adds_work():
            results = self._executor.wait()
            arrived = time.perf_counter()
            self._accept_all(results)
            if any(result.crashed for result in results):  # its worker may be gone for good
                self._follow_pool()
            self._assign()  # the freed workers go on before anything is written
            self._dispatch_seconds += time.perf_counter() - arrived
            if self._record_due():
                self._record(serve=True)
                if not self._in_flight:  # the last visits finished while it recorded
                    self._record()  # decide on them before the loop sees no work
            self._dispatch()

    def _last_look_adds_work(self) -> bool:
        """Out of work: apply the commands that arrived since the last look (an MST added
        just now must not find the run over), and say whether they gave work."""
        self._record()  # decisions first: they may end MSTs or add new ones
        self._commands_due = 0.0
        self._dispatch()
        return bool(self._in_flight)

    def _record_due(self) -> bool:
        """Record now, or let a few more short visits share one transaction?

        Now when an epoch awaits its decision, when no visit is in flight, when a
        state could be lost with a worker (a Ray object, with its node), or when the
        oldest unrecorded result is RECORD_INTERVAL_SECONDS old.
        """
        if not self._unrecorded:
            return False
        return (
            not self._in_flight
            or self._urgent_unrecorded
            or time.monotonic() - self._unrecorded[0].arrived >= RECORD_INTERVAL_SECONDS
        )

    def _is_urgent(self, finished: FinishedVisit) -> bool:
        """Does this visit make a record due at once (``_record_due``)?"""
        return bool(finished.epochs and self._decides) or bool(
            getattr(finished.state, "lost_with_worker", False)
        )

    def _remaining(self) -> int:
        return sum(self._scheduler.remaining_steps(i) for i in self._msts) + sum(
            len(v.steps) for v in self._in_flight.values()
        )

    def _dispatch(self) -> None:
        now = time.monotonic()
        if now >= self._commands_due:  # a query per visit would cost more than the visit
            self._commands_due = now + COMMAND_POLL_SECONDS
            apply_pending(self._store, self._name, self)  # between visits
        if now >= self._pool_due:
            self._pool_due = now + POOL_POLL_SECONDS
            self._follow_pool()
            self._rebalance()
        self._assign()
        self._feed_idle()
        self._mark_started()

    def _feed_idle(self) -> None:
        """Let the procedure add or promote MSTs for idle workers: first for those no
        waiting MST will take; then, in a fixed train order, while an idle worker holds
        the first shard of one of the next two new MSTs, for as many as that takes (each
        MST that starts at once brings at most one that waits).

        Not a new MST per idle worker: one idle while MSTs wait for other (busy) workers'
        shards got an MST that, starting on a busy worker's shard, waited too, again and
        again (one copy of the data, 32 workers, LCBench surrogate: 193 MSTs alive, each
        epoch 3.7x its compute). Nor only the first rule: with unequal step times such
        waits are frequent and the workers sat idle (one copy, simulated ASHA/Hyperband:
        busy 0.50 -> 0.95 of the time on 4 workers at lower regret, 0.48 -> 0.82 on 32
        at the same regret by 30 FTE, +0.01 at 10; ASHA on 2 real workers 0.71 -> 0.90;
        bench/anytime.py, bench/hybrid.py). In any train order a new MST starts on any
        idle worker; giving each one was measured worse at 32 workers (more MSTs alive,
        fewer reaching the top rungs), so there only the first rule applies."""
        n_idle = len(self._idle_workers()) - self._scheduler.n_waiting
        if n_idle > 0:
            self._procedure.on_idle(self, n_idle)
            self._assign()
        if self._scheduler.train_order is not TrainOrder.FIXED:
            return
        while (idle := self._idle_workers()) and (n := self._new_msts_to_reach(idle)):
            self._procedure.on_idle(self, n)
            self._assign()
            if len(self._idle_workers()) >= len(idle):
                return  # nothing (or nothing that runs now) came of it

    def _new_msts_to_reach(self, idle: list[int], lookahead: int = 2) -> int:
        """How many new MSTs, added in id order, until one starts on an idle worker (0
        when none of the next ``lookahead`` would)."""
        next_id = self._next_mst_id()
        for k in range(lookahead):
            if set(idle) & set(self._scheduler.first_shard_holders(next_id + k)):
                return k + 1
        return 0

    def _next_mst_id(self) -> int:
        return self._in_order[-1].id + 1 if self._in_order else 0

    def _idle_workers(self) -> list[int]:
        # The scheduler's until settled (a group's: every member).
        held = {w for visit, _ in self._held_back for w in visit.group or (visit.worker,)}
        held.update(v.worker for done in self._members_done.values() for v, _ in done)
        return [w for w in self._pool if w not in self._in_flight and w not in held]

    def _assign(self) -> None:
        self._take_pool_steps()
        for visit in self._scheduler.assign(self._idle_workers()):
            tracked = self._msts[visit.mst_id]
            mst = tracked.mst
            source, state, init = StateSource.FRESH, None, None
            if mst.id not in self._states:
                parent = self._warm_from.get(mst.id)
                init = self._states.get(parent) if parent is not None else None
            elif self._holds_latest(visit.worker, mst.id):
                source = StateSource.HELD
            else:
                source, state = StateSource.SENT, self._states[mst.id]
                self._n_hops += 1
                self._hop_bytes += state_nbytes(state)
            self._moved_bytes[visit.worker] = state_nbytes(state) if state is not None else 0
            task = VisitTask(
                mst.id, mst.params, mst.seed, visit.steps, source, state, init,
                self._group_spec(visit),
            )  # fmt: skip
            self._executor.submit(visit.worker, task)
            self._in_flight[visit.worker] = visit
            self._n_visits += 1
            if tracked.status is MSTStatus.PENDING:
                tracked.status = MSTStatus.RUNNING
                self._started.append(mst.id)  # written after the dispatch, off the critical path

    def _group_spec(self, visit: Visit) -> GroupSpec | None:
        """A group member's place in its group (the members meet at one rendezvous)."""
        if not visit.group:
            return None
        if visit.mst_id not in self._rendezvous:
            self._rendezvous[visit.mst_id] = self._executor.group_rendezvous()
        rank = visit.group.index(visit.worker)
        return GroupSpec(
            visit.group, rank, self._rendezvous[visit.mst_id],
            shared_memory=self._executor.group_shared_memory,
        )  # fmt: skip

    def _join_group(
        self, visit: Visit, result: VisitResult
    ) -> tuple[Visit, VisitResult, dict[Step, int]] | None:
        """A group member's visit ended: None until the group's last has, then the
        group's visits as one on the leader (the worker that ran each step beside them).
        Any member that crashed makes the group's epoch run again; otherwise any error
        fails the MST, with the error that is not a member's lost connection."""
        done = self._members_done.setdefault(visit.mst_id, [])
        done.append((visit, result))
        if len(done) < len(visit.group):
            if result.crashed or result.error is not None:  # the others may wait for it
                self._executor.abort_group(self._rendezvous[visit.mst_id])
            return None
        del self._members_done[visit.mst_id]
        self._executor.end_group(self._rendezvous.pop(visit.mst_id))
        results = {v.worker: r for v, r in done}
        for worker, member in results.items():
            if member.crashed:
                self._last_mst_on.pop(worker, None)
            else:  # it ran the MST; only the leader's copy counts as the latest (_holds_latest)
                self._last_mst_on[worker] = visit.mst_id
        crashed = any(r.crashed for r in results.values())
        failed = [r for r in results.values() if r.error is not None]
        failed.sort(key=lambda r: _lost_peer(r.error or ""))  # the cause first
        leader = results[visit.group[0]]
        outcomes = sorted((o for r in results.values() for o in r.outcomes),
                          key=lambda o: plan_order(o.step))  # fmt: skip
        joined = dataclasses.replace(
            leader, outcomes=tuple(outcomes), crashed=crashed,
            state_lost=any(r.state_lost for r in results.values()),
            error=None if crashed or not failed else failed[0].error,
            traceback=None if crashed or not failed else failed[0].traceback,
            state=None if crashed or failed else leader.state,
            busy_seconds=max(r.busy_seconds for r in results.values()),
        )  # fmt: skip
        steps = tuple(sorted((s for v, _ in done for s in v.steps), key=plan_order))
        workers = {s: v.worker for v, _ in done for s in v.steps}
        return Visit(visit.mst_id, visit.group[0], steps, visit.group), joined, workers

    def _train_alone(self, visit: Visit) -> None:
        """Auto: the MST's estimator cannot train in a group (its members built it and
        trained nothing): its epoch runs again on MOP, as every later one."""
        for worker in visit.group:
            self._last_mst_on.pop(worker, None)  # the failed build left no estimator there
        self._moved_bytes.pop(visit.worker, None)
        self._scheduler.requeue(visit)
        self._scheduler.keep_off_groups(visit.mst_id)

    def _mark_started(self) -> None:
        if not self._started:
            return
        with self._store.batch():  # one transaction for all MSTs that started together
            for mst_id in self._started:
                # One that started while a record served workers may have finished (and
                # committed its final status) since: RUNNING would overwrite that.
                if self._msts[mst_id].status is MSTStatus.RUNNING:
                    self._store.update_mst(self._name, mst_id, status=MSTStatus.RUNNING)
        self._started.clear()

    def _holds_latest(self, worker: int, mst_id: int) -> bool:
        """Whether the worker has the MST's latest state in memory, so no hop is needed.

        Both must hold: the MST's last visit ran there (else the worker's copy
        is stale), and the worker ran nothing since (so its cache still has it).
        """
        return (
            self._last_worker_of.get(mst_id) == worker and self._last_mst_on.get(worker) == mst_id
        )

    def _accept_all(self, results: list[VisitResult]) -> None:
        for result in results:
            if (finished := self._accept(result)) is not None:
                self._unrecorded.append(finished)
                # set here, not found by a scan per loop turn (a turn per finished visit)
                self._urgent_unrecorded = self._urgent_unrecorded or self._is_urgent(finished)

    def _accept(self, result: VisitResult) -> FinishedVisit | None:
        """Account for a finished visit in memory (no I/O); None if it needs no record."""
        visit = self._in_flight.pop(result.worker)
        self._busy_seconds += result.busy_seconds  # every member's, failed visits' too
        workers: dict[Step, int] = {}  # group epochs: the member that ran each step
        if visit.group:
            if (joined := self._join_group(visit, result)) is None:
                return None
            visit, result, workers = joined
            # A member that reported waits, busy, for the others: its entry is still there.
            moved = sum(self._moved_bytes.pop(w, 0) for w in visit.group)
            self._moved_bytes[visit.worker] = moved
            if result.extra.get(GROUP_UNSUPPORTED) and self._scheduler.hybrid is Hybrid.AUTO:
                self._train_alone(visit)
                return None
        if result.state_unchanged and not result.crashed and result.error is None:
            # An evaluation-only visit: the state it started from is still the latest.
            result = dataclasses.replace(result, state=self._states.get(visit.mst_id))
        if result.crashed:
            self._last_mst_on.pop(result.worker, None)  # the new process holds no state
        else:
            self._last_mst_on[result.worker] = result.mst_id
            self._last_worker_of[result.mst_id] = result.worker
        if result.crashed or result.error is not None or result.state is None:
            if self._recording:  # a record in progress must end before another begins
                self._held_back.append((visit, result))
            else:
                self._settle(visit, result)
            return None
        if self._rolled_back(visit):
            return None
        seconds = [o.result.seconds for o in result.outcomes]
        waited = float(result.extra.get("allreduce_seconds", 0.0))
        self._scheduler.complete(visit, seconds, allreduce_seconds=waited)
        self._n_steps += len(visit.steps)
        self._compute_seconds += sum(seconds)
        for outcome in result.outcomes:
            key = (visit.mst_id, workers.get(outcome.step, visit.worker))
            self._work[key] = self._work.get(key, 0.0) + outcome.result.seconds
        epochs = self._recorder.add_outcomes(visit.mst_id, result.outcomes)
        if epochs and self._decides:  # no further visit before the procedure has decided
            self._scheduler.hold(visit.mst_id)
        self._states[visit.mst_id] = result.state
        self._bar.update(len(visit.steps), self._remaining)
        moved = self._moved_bytes.pop(visit.worker, 0)  # the dashboard's timeline shows hops
        return FinishedVisit(
            visit, result, result.state, epochs, moved, time.monotonic(), workers=workers
        )

    def _record(self, *, serve: bool = False) -> None:
        """Checkpoints, then one store transaction for all unrecorded visits, then the
        procedure's decisions on the epochs they completed.

        With ``serve``, workers that finish meanwhile get their next visit between
        checkpoint writes: a record takes milliseconds per visit, which a worker
        would otherwise spend waiting (the new results go to the next record).
        """
        if not self._unrecorded:
            return
        self._recording = True
        try:
            self._record_unrecorded(serve)
        finally:
            self._recording = False
        # Crashes and failures that arrived while serving: each records what finished
        # before it first (a nested record would commit later visits of an MST before
        # earlier ones, and leave its latest checkpoint behind its recorded steps).
        held, self._held_back = self._held_back, []
        for visit, result in held:
            self._settle(visit, result)

    def _record_unrecorded(self, serve: bool) -> None:
        self._mark_started()  # before any of their visits, in the store's order
        finished, self._unrecorded = self._unrecorded, []
        self._urgent_unrecorded = False
        # Visits of an MST rolling back (begun from its lost state): not recorded.
        finished = [f for f in finished if f.visit.mst_id not in self._rolling_back]
        started = time.perf_counter()
        last_training = {f.visit.mst_id: f for f in finished if f.trains}
        built = []
        lost: dict[int, tuple[int, str]] = {}  # MST -> (worker, why): its state is gone
        for f in finished:
            if serve:
                self._serve_finished()
            if f.visit.mst_id in lost:
                continue  # a later visit of an MST whose state was lost: not recorded either
            try:
                record = self._recorder.visit_record(f, f is last_training.get(f.visit.mst_id))
            except StateLostError as e:
                lost[f.visit.mst_id] = (f.visit.worker, str(e))
                continue
            built.append((f, record))
        # An MST with a lost state records none of this transaction's visits: its latest
        # checkpoint is the one before them (_roll_back trains them again from it).
        built = [(f, record) for f, record in built if f.visit.mst_id not in lost]
        finished = [f for f, _ in built]
        records = []
        for f, record in built:
            # A procedure that decides nothing from metrics (grid, random) only completes
            # the MST at its last epoch: that status commits with the visit.
            if f.epochs and not self._decides:
                fields, events = self._decision(f.visit.mst_id, f.epochs)
                record = dataclasses.replace(
                    record, mst_fields={**record.mst_fields, **fields},
                    events=[*record.events, *events],
                )  # fmt: skip
            records.append(record)
        if serve:
            self._serve_finished()
        self._recorder.commit(records)
        if fault := FAULTS.get("record_committed"):
            fault()
        for mst_id, (worker, why) in lost.items():
            self._roll_back(mst_id, worker, why)
        pending = [(f.visit.mst_id, f.epochs) for f in finished if f.epochs]
        if self._decides and pending:
            if fault := FAULTS.get("visits_committed"):
                fault()
            self._commit_decisions(pending)
        for mst_id in dict.fromkeys(f.visit.mst_id for f in finished):
            self._recorder.prune(mst_id)
        for f in finished:
            if f.epochs and self._decides:
                self._scheduler.unhold(f.visit.mst_id)
        self._record_seconds += time.perf_counter() - started

    def _serve_finished(self) -> None:
        """Accept the visits finished by now (no waiting) and give their workers more."""
        results = self._executor.poll()
        self._accept_all(results)
        if results:
            self._assign()

    def _decision(
        self, mst_id: int, epochs: list[EpochRecord], *, replay: bool = False
    ) -> tuple[dict[str, Any], list[tuple[EventKind, dict[str, Any]]]]:
        """Decide on the MST's epochs: the MST fields and events to commit (a new final
        status and its event, if any)."""
        decision = self._decide(mst_id, epochs, replay=replay)
        # Two visits of one MST in one record can both see its budget done: one event.
        if decision is None or decision is self._msts[mst_id].status:
            return {}, []
        self._msts[mst_id].status = decision
        return {"status": decision}, [(_STATUS_EVENT[decision], {})]

    def _commit_decisions(
        self, pending: list[tuple[int, list[EpochRecord]]], *, replay: bool = False
    ) -> None:
        """Ask the procedure about committed epochs, in order; commit the decisions, their
        effects and one EPOCH_DECIDED marker per epoch in one transaction."""
        if not pending:
            return
        with self._store.batch():
            for mst_id, epochs in pending:
                fields, events = self._decision(mst_id, epochs, replay=replay)
                events += [(EventKind.EPOCH_DECIDED, {"epoch": r.epoch}) for r in epochs]
                if fields:
                    self._store.update_mst(self._name, mst_id, **fields)
                # after what the procedure did in deciding, as before: one insert per MST
                self._store.add_events(self._name, [(k, mst_id, d) for k, d in events])

    def _decide(
        self, mst_id: int, epochs: list[EpochRecord], *, replay: bool = False
    ) -> MSTStatus | None:
        """Ask the procedure after each completed epoch; return a new final status, if any.
        ``replay``: the epochs are already among ``results()`` (restored on resume)."""
        tracked = self._msts[mst_id]
        for record in epochs:
            result = EpochResult(mst_id, record.epoch, record.metrics)
            if not replay:
                self._evaluated.append(result)
            decision = self._procedure.on_epoch_end(self, result)
            if tracked.status.ended:
                return None  # stopped by the procedure (stop()) or a command, or failed
            if decision is Decision.STOP and self._scheduler.remaining_steps(mst_id):
                self._scheduler.stop(mst_id)
                return MSTStatus.STOPPED
        if self._scheduler.remaining_steps(mst_id) == 0:
            return MSTStatus.COMPLETED
        return None

    def _settle(self, visit: Visit, result: VisitResult) -> None:
        """A visit that left no state: its worker crashed, or its MST failed."""
        if self._rolled_back(visit):
            return
        if result.crashed:
            self._requeue_after_crash(visit, state_lost=result.state_lost)
        else:
            self._fail(visit, result)

    def _requeue_after_crash(self, visit: Visit, *, state_lost: bool = False) -> None:
        """The worker died mid-visit and was replaced: run the visit again from the last state."""
        self._record()  # in order: what finished before the crash first
        if self._rolled_back(visit):  # it began from a state that record found lost
            return
        if state_lost:  # it lived on a node that died: fall back to the checkpoints
            parent = self._warm_from.get(visit.mst_id)
            for mst_id in (visit.mst_id,) if parent is None else (visit.mst_id, parent):
                if (state := self._recorder.read_latest(mst_id)) is not None:
                    self._states[mst_id] = state
        self._scheduler.requeue(visit)
        self._store.add_event(
            self._name, EventKind.WORKER_RESTARTED, mst_id=visit.mst_id, worker=visit.worker,
            detail={"steps": len(visit.steps)},
        )  # fmt: skip

    def _fail(self, visit: Visit, result: VisitResult) -> None:
        self._record()  # in order: the MST's earlier visits first
        if self._rolled_back(visit):  # it began from a state that record found lost
            return
        self._scheduler.fail(visit)
        self._mark_failed(visit.mst_id, visit.worker, result.error, result.traceback)

    def _roll_back(self, mst_id: int, worker: int, why: str) -> None:
        """The MST's newest state went with a node before it was saved: its recorded steps
        end at its latest checkpoint. Its visits since (none recorded) run again from
        that checkpoint, as a resumed run would run them, to the same results; at once,
        or once its visit in flight (begun from the lost state) ends."""
        self._rolling_back[mst_id] = (worker, why)
        if not self._scheduler.is_running(mst_id):
            self._train_again_from_checkpoint(mst_id)

    def _rolled_back(self, visit: Visit) -> bool:
        """A visit of an MST rolling back ended (whatever its result): it runs again."""
        if visit.mst_id not in self._rolling_back:
            return False
        self._moved_bytes.pop(visit.worker, None)
        self._scheduler.requeue(visit)  # frees its workers; the MST is planned anew below
        self._train_again_from_checkpoint(visit.mst_id)
        return True

    def _train_again_from_checkpoint(self, mst_id: int) -> None:
        worker, why = self._rolling_back.pop(mst_id)
        self._unrecorded = [f for f in self._unrecorded if f.visit.mst_id != mst_id]
        self._urgent_unrecorded = any(self._is_urgent(f) for f in self._unrecorded)
        steps = self._store.list_steps(self._name, mst_id)
        record = next(m for m in self._store.list_msts(self._name) if m.mst_id == mst_id)
        self._reload(record, steps, self._store.list_epochs(self._name, mst_id))
        self._scheduler.restart(mst_id, [step_of(step) for step in steps])
        self._last_worker_of.pop(mst_id, None)  # no worker holds the checkpoint's state
        self._store.add_event(
            self._name, EventKind.MST_ROLLED_BACK, mst_id=mst_id, worker=worker,
            detail={"why": why, "steps_kept": len(steps)},
        )  # fmt: skip
        warnings.warn(
            f"MST {mst_id}'s state after a visit on worker {worker} was lost before it was "
            f"saved ({why}): it trains again from its last checkpoint ({len(steps)} steps "
            "recorded), to the same results",
            stacklevel=3,
        )

    def _mark_failed(
        self, mst_id: int, worker: int, error: str | None, traceback: str | None = None
    ) -> None:
        """Record the MST as failed (status, error, event) and warn; the others go on."""
        tracked = self._msts[mst_id]
        tracked.status = MSTStatus.FAILED
        self._store.update_mst(
            self._name, mst_id, status=MSTStatus.FAILED, error=error, traceback=traceback
        )
        self._store.add_event(
            self._name, EventKind.MST_FAILED, mst_id=mst_id, worker=worker,
            detail={"error": error},
        )  # fmt: skip
        self._bar.update(0, self._remaining)
        warnings.warn(
            f"MST {mst_id} {tracked.mst.params} failed: {error}; the others go on", stacklevel=3
        )

    def _raise_if_all_failed(self) -> None:
        failed = [t for t in self._msts.values() if t.status is MSTStatus.FAILED]
        if failed and len(failed) == len(self._msts):
            errors = {r.mst_id: r.error for r in self._store.list_msts(self._name)}
            reasons = sorted({errors.get(t.mst.id) or "unknown" for t in failed})
            raise AllMSTsFailedError(
                f"all {len(failed)} MSTs failed ({len(reasons)} distinct reasons): "
                + "; ".join(reasons[:5])
            )

    def _stats(self, wall: float) -> RunStats:
        rows = {mst: i for i, mst in enumerate(sorted({m for m, _ in self._work}))}
        matrix = np.zeros((len(rows), self._scheduler.n_workers))
        for (mst, worker), seconds in self._work.items():
            matrix[rows[mst], worker] += seconds
        return RunStats(
            n_workers=self._peak_workers,
            wall_seconds=wall,
            total_seconds=wall,
            compute_seconds=self._compute_seconds,
            busy_seconds=self._busy_seconds,
            n_visits=self._n_visits,
            n_hops=self._n_hops,
            hop_bytes=self._hop_bytes,
            resident_shard_bytes=tuple(self._executor.resident_shard_bytes),
            dataset_bytes=0,
            lower_bound_seconds=makespan_lower_bound(matrix),
            n_steps=self._n_steps,
            record_seconds=self._record_seconds,
            dispatch_seconds=self._dispatch_seconds,
            shard_bytes_moved=self._executor.moved_shard_bytes,
        )


def _lost_peer(error: str) -> bool:
    """Whether a group member's error only says another member was lost (not the cause)."""
    return error.startswith(("GroupAbortedError", "TimeoutError")) or "gloo" in error
