"""Recording finished visits: epoch metrics from step results, checkpoints, best epochs.

The driver's loop accounts for a finished visit in memory and hands it here to
become a store record: the steps it ran, the epochs it completed (metrics
aggregated over every shard, in shard order, so they are exact), the checkpoint
after it and the MST's best-epoch checkpoint. Everything this unit holds can be
rebuilt from the store and the checkpoints (``restore``), which is what makes a
resumed run continue where the last commit left it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelhopper._ranking import better
from modelhopper._vocabulary import Direction, Step, StepKind
from modelhopper.estimator import EPOCH_TRAIN_SECONDS, SKIPPED, PassResult
from modelhopper.executors import State, StepOutcome, VisitResult, state_bytes
from modelhopper.scheduling import Visit
from modelhopper.store import BaseStore, EpochRecord, EventKind, StepRecord, VisitRecord
from modelhopper.store._checkpoints import CheckpointManager, Retention

__all__ = ["FinishedVisit", "Recorder", "candidate_steps"]


def candidate_steps(epoch: int, n_shards: int) -> int:
    """The name (a step count) of the checkpoint holding the state epoch ``epoch`` evaluates.

    An epoch is 2p steps (p train, p eval); its last train step shares a visit
    with its first eval step, so the checkpoint after that visit holds it. A
    worker holding replicas may run more evaluations in that visit; they change
    no state, so its checkpoint holds the same state and takes the same name.
    """
    return 2 * n_shards * epoch + n_shards + 1


@dataclass
class FinishedVisit:
    """A visit whose result arrived and is accounted for, but not yet recorded in the store."""

    visit: Visit
    result: VisitResult
    state: State
    epochs: list[EpochRecord]  # the epochs this visit completed
    moved: int  # state bytes the visit was sent (0: no hop)
    arrived: float  # time.monotonic() when its result was accounted for
    # When its steps finished (their result arrived), recorded as such: the commit may
    # come a little later, and "finished" must not mean "committed".
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    workers: Mapping[Step, int] = field(default_factory=dict)  # a group's: who ran each step

    @property
    def trains(self) -> bool:
        return any(s.kind is StepKind.TRAIN for s in self.visit.steps)


@dataclass
class _Epoch:
    """Per-shard results of one MST's epoch until every validation shard has reported."""

    train: dict[int, PassResult] = field(default_factory=dict)
    evaluation: dict[int, PassResult] = field(default_factory=dict)
    train_order: dict[int, int] = field(default_factory=dict)  # position -> shard
    # Shards in the order they were evaluated: only the first and last are planned
    # (the scheduler's module says why), and evaluation changes no state.
    eval_order: list[int] = field(default_factory=list)

    def add(self, step: Step, result: PassResult) -> None:
        if step.kind is StepKind.TRAIN:
            self.train[step.shard] = result
            self.train_order[step.position] = step.shard
        else:
            self.evaluation[step.shard] = result
            self.eval_order.append(step.shard)

    def record(self, mst_id: int, number: int) -> EpochRecord:
        train_seconds = sum(self.train[s].seconds for s in sorted(self.train))
        metrics = {
            **_aggregate("train", self.train),
            **_aggregate("val", self.evaluation),
            EPOCH_TRAIN_SECONDS: train_seconds,
        }
        return EpochRecord(
            mst_id=mst_id,
            epoch=number,
            metrics=metrics,
            train_order=[self.train_order[i] for i in sorted(self.train_order)],
            eval_order=list(self.eval_order),
            train_seconds=train_seconds,
            eval_seconds=sum(p.seconds for p in self.evaluation.values()),
        )


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
class _Checkpoints:
    """One MST's recorded steps and the checkpoints the store names for it."""

    n_steps: int = 0
    latest: str | None = None  # the state after its last recorded visit
    best: str | None = None  # the state its best epoch evaluated
    best_value: float | None = None


class Recorder:
    """Turns finished visits into store records, writing checkpoints and tracking bests."""

    def __init__(
        self,
        *,
        name: str,
        store: BaseStore,
        checkpoints: CheckpointManager,
        n_shards: int,
        metric: str,
        direction: Direction,
    ) -> None:
        self._name, self._store, self._files = name, store, checkpoints
        self._n_shards, self._metric, self._direction = n_shards, metric, direction
        self._msts: dict[int, _Checkpoints] = {}
        self._epochs: dict[tuple[int, int], _Epoch] = {}  # epochs some shard has not reported

    def track(self, mst_id: int) -> None:
        """Record a new MST's visits from now on."""
        self._msts[mst_id] = _Checkpoints()

    def restore(
        self,
        mst_id: int,
        *,
        latest: str | None,
        best: str | None,
        steps: Sequence[StepRecord],
        epochs: Sequence[EpochRecord],
    ) -> None:
        """Rebuild an MST's record from the store: its checkpoints, its best value, and the
        steps of epochs that were not complete when the run stopped."""
        done = {e.epoch for e in epochs}
        self._msts[mst_id] = _Checkpoints(len(steps), latest, best)
        for key in [k for k in self._epochs if k[0] == mst_id]:  # steps run since: undone
            del self._epochs[key]
        for step in steps:
            if step.epoch not in done:
                self._epoch(mst_id, step.epoch).add(*_from_record(step))
        for epoch in sorted(epochs, key=lambda e: e.epoch):
            self._improves(mst_id, epoch.metrics)

    def latest(self, mst_id: int) -> str | None:
        return self._msts[mst_id].latest

    def read_latest(self, mst_id: int) -> bytes | None:
        """The MST's state after its last recorded visit, from its checkpoint."""
        path = self._msts[mst_id].latest
        return None if path is None else self._files.read(path)

    def add_outcomes(self, mst_id: int, outcomes: Iterable[StepOutcome]) -> list[EpochRecord]:
        """Account for a visit's step results; the epochs they completed, as records."""
        completed = []
        for outcome in outcomes:
            number = outcome.step.epoch
            epoch = self._epoch(mst_id, number)
            epoch.add(outcome.step, outcome.result)
            if len(epoch.evaluation) == self._n_shards:
                del self._epochs[mst_id, number]
                completed.append(epoch.record(mst_id, number))
        return completed

    def visit_record(self, finished: FinishedVisit, last_training: bool) -> VisitRecord:
        """Write the visit's checkpoint if needed; its record (steps, epochs, checkpoints).

        A checkpoint is written after a visit that trained, unless a later visit of the
        same MST in this transaction supersedes it (``last_training`` is False) and it
        is not the state an epoch evaluates, which may become the best. Evaluation
        changes no state: after an evaluation-only visit the MST's latest checkpoint
        stays the one before it. ``checkpoints="all"`` keeps one after every visit.
        """
        visit = finished.visit
        mst = self._msts[visit.mst_id]
        keep_all = self._files.retention is Retention.ALL
        evaluated = self._evaluated_state_epoch(visit.steps)
        candidate = evaluated is not None
        if mst.latest is None or keep_all or (finished.trains and (last_training or candidate)):
            state = state_bytes(finished.state)  # first: StateLostError leaves nothing done
            steps_after = mst.n_steps + len(visit.steps)
            name = self._candidate(evaluated) if evaluated is not None else steps_after
            mst.latest = str(self._files.write(visit.mst_id, name, state))
        mst.n_steps += len(visit.steps)
        earlier = dict(finished.result.epoch_states)  # a chained visit's earlier epochs
        steps = [
            _to_record(visit.mst_id, finished.workers.get(o.step, visit.worker), o.step,
                       o.result, finished.finished_at)
            for o in finished.result.outcomes
        ]  # fmt: skip
        events: list[tuple[EventKind, dict[str, Any]]] = [
            (EventKind.HOPPED, {"worker": visit.worker, "steps": len(visit.steps),
                                "hop": finished.moved > 0, "bytes": finished.moved})
        ]  # fmt: skip
        if visit.group:
            events.append((EventKind.GROUP_EPOCH, _group_detail(finished)))
        for record in finished.epochs:
            improves = self._improves(visit.mst_id, record.metrics)
            if record.epoch in earlier and (improves or keep_all):
                name = self._candidate(record.epoch)
                self._files.write(visit.mst_id, name, earlier[record.epoch])
            if improves:
                mst.best = str(self._files.path(visit.mst_id, self._candidate(record.epoch)))
            events.append((EventKind.EPOCH_END, {"epoch": record.epoch}))
        fields: dict[str, Any] = {"checkpoint": mst.latest, "best_checkpoint": mst.best}
        return VisitRecord(visit.mst_id, steps, finished.epochs, fields, events)

    def _evaluated_state_epoch(self, steps: Sequence[Step]) -> int | None:
        """The epoch whose evaluated state a visit ends with: that of its last training
        step, if that step ended the epoch (evaluations after it change no state)."""
        trained = [s for s in steps if s.kind is StepKind.TRAIN]
        if trained and trained[-1].is_last(StepKind.TRAIN, self._n_shards):
            return trained[-1].epoch
        return None

    def commit(self, records: list[VisitRecord]) -> None:
        """Every record in one store transaction, after its checkpoints are durable."""
        self._files.sync()
        self._store.record_visits(self._name, records)

    def prune(self, mst_id: int) -> None:
        """Delete checkpoints no one needs: keep latest, best, and pending epoch candidates."""
        mst = self._msts[mst_id]
        live = {mst.latest, mst.best if self._files.keeps_best() else None}
        for owner, epoch in self._epochs:
            if owner == mst_id:
                live.add(str(self._files.path(mst_id, self._candidate(epoch))))
        self._files.prune(mst_id, {p for p in live if p is not None})

    def _candidate(self, epoch: int) -> int:
        return candidate_steps(epoch, self._n_shards)

    def _epoch(self, mst_id: int, epoch: int) -> _Epoch:
        return self._epochs.setdefault((mst_id, epoch), _Epoch())

    def _improves(self, mst_id: int, metrics: Mapping[str, float]) -> bool:
        """Whether this epoch is the MST's best so far (then it becomes the best)."""
        mst = self._msts[mst_id]
        value = metrics.get(self._metric)
        if not better(value, mst.best_value, self._direction):
            return False
        mst.best_value = value
        return True


def _group_detail(finished: FinishedVisit) -> dict[str, Any]:
    """What a group epoch's record says: its members, the shards each trained on, and
    the global batches (each takes rows / steps of every shard's rows, within one)."""
    visit, result = finished.visit, finished.result
    train = [o for o in result.outcomes if o.step.kind is StepKind.TRAIN]
    shards: dict[str, list[int]] = {str(w): [] for w in visit.group}
    for outcome in train:
        shards[str(finished.workers[outcome.step])].append(outcome.step.shard)
    return {
        "mode": "group", "epoch": train[0].step.epoch if train else None,
        "workers": list(visit.group), "shards": shards,
        "rows": {str(o.step.shard): o.result.n for o in train},
        "steps": result.extra.get("group_steps"),
        "allreduce_seconds": result.extra.get("allreduce_seconds"),
    }  # fmt: skip


def _to_record(
    mst_id: int, worker: int, step: Step, result: PassResult, finished_at: datetime | None = None
) -> StepRecord:
    return StepRecord(
        mst_id=mst_id,
        epoch=step.epoch,
        kind=step.kind,
        shard=step.shard,
        position=step.position,
        worker=worker,
        n=result.n,
        loss_sum=result.loss_sum,
        metric_sums=dict(result.metric_sums),
        seconds=result.seconds,
        finished_at=finished_at,
    )


def step_of(record: StepRecord) -> Step:
    """The planned step a stored step record ran."""
    return Step(StepKind(record.kind), record.epoch, record.shard, record.position)


def _from_record(record: StepRecord) -> tuple[Step, PassResult]:
    result = PassResult(record.n, record.loss_sum, dict(record.metric_sums), record.seconds)
    return step_of(record), result
