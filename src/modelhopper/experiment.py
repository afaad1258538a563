"""The driver loop: ask the procedure for MSTs, the scheduler for visits, the executor to run them.

The driver never touches shard data after writing the shards: it holds
metadata, metrics and the latest state bytes of each MST.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch

from modelhopper.data import Dataset
from modelhopper.data._sharding import write_shards
from modelhopper.errors import AllMSTsFailedError, ConfigError
from modelhopper.estimator import PassResult, build_estimator, metric_names
from modelhopper.executors import BaseExecutor, LocalExecutor, VisitResult, VisitTask
from modelhopper.procedures._base import MST, BaseProcedure, Decision
from modelhopper.result import MSTResult, MSTStatus, Result, RunStats
from modelhopper.scheduling import MOPScheduler, StepKind, Visit, makespan_lower_bound

__all__ = ["Experiment"]


@dataclass
class _Epoch:
    """Per-shard results of one MST's epoch until every validation shard has reported."""

    train: dict[int, PassResult] = field(default_factory=dict)
    evaluation: dict[int, PassResult] = field(default_factory=dict)
    train_order: dict[int, int] = field(default_factory=dict)  # position -> shard
    eval_order: dict[int, int] = field(default_factory=dict)


def _aggregate(prefix: str, parts: Mapping[int, PassResult]) -> dict[str, float]:
    """Example-weighted means over shards, summed in shard order so results are exact."""
    ordered = [parts[s] for s in sorted(parts)]
    n = sum(p.n for p in ordered)
    metrics = {f"{prefix}_loss": sum(p.loss_sum for p in ordered) / n}
    for name in ordered[0].metric_sums:
        metrics[f"{prefix}_{name}"] = sum(p.metric_sums[name] for p in ordered) / n
    return metrics


def _default_run_dir(run_name: str | None) -> Path:
    name = run_name or datetime.now().strftime("run-%Y%m%d-%H%M%S-") + str(os.getpid())
    return Path("modelhopper-runs") / name


class Experiment:
    """One run of a procedure on MOP; ``run()`` returns the ``Result``."""

    def __init__(
        self,
        procedure: BaseProcedure,
        data: Dataset,
        *,
        n_workers: int,
        executor: BaseExecutor | None = None,
        run_name: str | None = None,
        run_dir: str | os.PathLike | None = None,
        progress: bool = False,
        keep_shards: bool = False,
    ) -> None:
        if not isinstance(data, Dataset):
            raise ConfigError(
                f"data must be a modelhopper.Dataset, got {type(data).__name__}; build one with "
                "Dataset.from_numpy / from_pandas / from_parquet / from_torch"
            )
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ConfigError(
                f"n_workers must be an integer >= 1, got {n_workers!r}; e.g. n_workers=2"
            )
        if len(data.train) < n_workers:
            raise ConfigError(
                f"n_workers={n_workers} is more than the {len(data.train)} training examples; "
                f"every worker's shard needs at least one: use n_workers <= {len(data.train)}"
            )
        if executor is not None and not isinstance(executor, BaseExecutor):
            raise ConfigError(f"executor must be a BaseExecutor, got {type(executor).__name__}")
        self.procedure = procedure
        self.data = data
        self.n_workers = n_workers
        self.executor = executor or LocalExecutor()
        self.run_dir = Path(run_dir) if run_dir is not None else _default_run_dir(run_name)
        self.progress = progress
        self.keep_shards = keep_shards
        self.msts = self._initial_msts()
        self._check_before_start()

    # -- checks before any worker starts -------------------------------
    def _initial_msts(self) -> list[MST]:
        proposals = self.procedure.propose()
        if not proposals:
            raise ConfigError("the procedure proposed no MSTs; check the space and n_msts")
        return [self.procedure.make_mst(i, params) for i, params in enumerate(proposals)]

    def _check_before_start(self) -> None:
        """Probe the first MST's estimator: metric names and label range."""
        first = self.msts[0]
        try:
            estimator = build_estimator(self.procedure.make_estimator, first.params, first.seed)
        except Exception:  # a factory that fails fails its MSTs alone, on the workers
            return
        names = metric_names(estimator.metrics)
        if self.procedure.metric not in names:
            raise ConfigError(
                f"unknown metric {self.procedure.metric!r}; this run reports {names} "
                "(add the metric to Estimator.metrics, e.g. metrics=['accuracy'])"
            )
        labels = self.data.train.y
        if np.issubdtype(labels.dtype, np.integer) and labels.ndim == 1:
            with torch.no_grad():
                output = estimator.model.eval()(torch.from_numpy(self.data.train.x[:2]))
            if output.ndim == 2 and output.shape[1] > 1:
                self.data.check_labels(int(output.shape[1]))

    # -- the run -------------------------------------------------------
    def run(self) -> Result:
        started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "factory.pkl").write_bytes(cloudpickle.dumps(self.procedure.make_estimator))
        shards = write_shards(
            self.data, self.n_workers, self.run_dir / "shards", self.procedure.seed
        )
        try:
            with self.executor:
                self.executor.start(shards, self.procedure.make_estimator)
                loop = _Loop(self)
                loop.run()
        finally:
            if not self.keep_shards:
                shutil.rmtree(self.run_dir / "shards", ignore_errors=True)
        return loop.result(time.perf_counter() - started)


class _Loop:
    """State of the driver loop for one run."""

    def __init__(self, experiment: Experiment) -> None:
        self.x = experiment
        self.procedure = experiment.procedure
        self.executor = experiment.executor
        self.n_workers = experiment.n_workers
        self.scheduler = MOPScheduler(
            self.n_workers, policy=self.procedure.policy, seed=self.procedure.seed
        )
        self.msts = {m.id: m for m in experiment.msts}
        self.results = {
            m.id: MSTResult(m.id, m.params, m.seed, MSTStatus.PENDING) for m in experiment.msts
        }
        for mst in experiment.msts:
            self.scheduler.add_mst(mst.id, self.procedure.epochs)
        self.states: dict[int, bytes] = {}
        self.last_mst_on: dict[int, int] = {}  # worker -> MST of its last visit
        self.in_flight: dict[int, Visit] = {}
        self.epochs: dict[tuple[int, int], _Epoch] = {}
        self.work = np.zeros((len(self.msts), self.n_workers))
        self.compute_seconds = 0.0
        self.n_visits = self.n_hops = self.hop_bytes = 0
        self.wall = 0.0
        self.checkpoints = experiment.run_dir / "checkpoints"
        self.checkpoints.mkdir(exist_ok=True)

    def run(self) -> None:
        started = time.perf_counter()
        with _progress(self.x.progress, self._total_steps()) as bar:
            self.bar = bar
            while True:
                self._dispatch()
                if not self.in_flight:
                    break
                for result in self.executor.wait():
                    self._handle(result)
        self.wall = time.perf_counter() - started
        self._raise_if_all_failed()

    def _total_steps(self) -> int:
        return sum(self.scheduler.remaining_steps(i) for i in self.msts)

    def _dispatch(self) -> None:
        idle = [w for w in range(self.n_workers) if w not in self.in_flight]
        for visit in self.scheduler.assign(idle):
            mst = self.msts[visit.mst_id]
            fresh = mst.id not in self.states
            state = None
            if not fresh and self.last_mst_on.get(visit.worker) != mst.id:
                state = self.states[mst.id]
                self.n_hops += 1
                self.hop_bytes += len(state)
            task = VisitTask(mst.id, mst.params, mst.seed, visit.steps, state, fresh)
            self.executor.submit(visit.worker, task)
            self.in_flight[visit.worker] = visit
            self.results[mst.id].status = MSTStatus.RUNNING
            self.n_visits += 1

    def _handle(self, result: VisitResult) -> None:
        visit = self.in_flight.pop(result.worker)
        self.last_mst_on[result.worker] = result.mst_id
        if result.error is not None or result.state is None:
            self._fail(visit, result)
            return
        seconds = [o.result.seconds for o in result.outcomes]
        self.scheduler.complete(visit, seconds)
        self.compute_seconds += sum(seconds)
        self.work[visit.mst_id, visit.worker] += sum(seconds)
        self.states[visit.mst_id] = result.state
        self._save_checkpoint(visit.mst_id, result.state)
        for outcome in result.outcomes:
            self._record_step(visit.mst_id, outcome.step, outcome.result)
        self.bar.advance(len(result.outcomes), self._total_steps())
        if self.scheduler.remaining_steps(visit.mst_id) == 0 and not self.scheduler.is_stopped(
            visit.mst_id
        ):
            self.results[visit.mst_id].status = MSTStatus.COMPLETED

    def _save_checkpoint(self, mst_id: int, state: bytes) -> None:
        path = self.checkpoints / f"mst-{mst_id:05d}.pt"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(state)
        tmp.replace(path)  # atomic: a reader sees the old or the new state, never half
        self.results[mst_id].checkpoint = path

    def _record_step(self, mst_id: int, step, result: PassResult) -> None:
        epoch = self.epochs.setdefault((mst_id, step.epoch), _Epoch())
        if step.kind is StepKind.TRAIN:
            epoch.train[step.shard] = result
            epoch.train_order[step.position] = step.shard
            return
        epoch.evaluation[step.shard] = result
        epoch.eval_order[step.position] = step.shard
        if len(epoch.evaluation) == self.n_workers:
            self._end_epoch(mst_id, step.epoch, self.epochs.pop((mst_id, step.epoch)))

    def _end_epoch(self, mst_id: int, number: int, epoch: _Epoch) -> None:
        row: dict[str, Any] = {"mst_id": mst_id, "epoch": number}
        row.update(_aggregate("train", epoch.train))
        row.update(_aggregate("val", epoch.evaluation))
        row["train_order"] = [epoch.train_order[i] for i in sorted(epoch.train_order)]
        row["eval_order"] = [epoch.eval_order[i] for i in sorted(epoch.eval_order)]
        row["train_seconds"] = sum(p.seconds for p in epoch.train.values())
        row["eval_seconds"] = sum(p.seconds for p in epoch.evaluation.values())
        self.results[mst_id].history.append(row)
        decision = self.procedure.on_epoch_end(self.msts[mst_id], number, row)
        if decision is Decision.STOP and self.scheduler.remaining_steps(mst_id):
            self.scheduler.stop(mst_id)
            self.results[mst_id].status = MSTStatus.STOPPED

    def _fail(self, visit: Visit, result: VisitResult) -> None:
        self.scheduler.fail(visit)
        record = self.results[visit.mst_id]
        record.status = MSTStatus.FAILED
        record.error = result.error
        record.traceback = result.traceback
        self.bar.advance(0, self._total_steps())
        warnings.warn(
            f"MST {visit.mst_id} {record.params} failed: {result.error}; the others go on",
            stacklevel=2,
        )

    def _raise_if_all_failed(self) -> None:
        failed = [r for r in self.results.values() if r.status is MSTStatus.FAILED]
        if failed and len(failed) == len(self.results):
            reasons = sorted({r.error or "unknown" for r in failed})
            summary = "; ".join(reasons[:5])
            raise AllMSTsFailedError(
                f"all {len(failed)} MSTs failed ({len(reasons)} distinct reasons): {summary}"
            )

    def result(self, total_seconds: float) -> Result:
        factory = self.procedure.make_estimator
        for record in self.results.values():
            record._factory = factory
        stats = RunStats(
            n_workers=self.n_workers,
            wall_seconds=self.wall,
            total_seconds=total_seconds,
            compute_seconds=self.compute_seconds,
            n_visits=self.n_visits,
            n_hops=self.n_hops,
            hop_bytes=self.hop_bytes,
            resident_shard_bytes=tuple(self.executor.resident_shard_bytes),
            dataset_bytes=self.x.data.train.nbytes + self.x.data.validation.nbytes,
            lower_bound_seconds=makespan_lower_bound(self.work),
        )
        return Result(
            msts=[self.results[i] for i in sorted(self.results)],
            metric=self.procedure.metric,
            direction=self.procedure.direction.value,
            run_dir=self.x.run_dir,
            stats=stats,
        )


class _progress:
    """A rich progress bar of steps done / total with ETA, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total

    def __enter__(self) -> _progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]sub-epochs"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total)
        return self

    def advance(self, n: int, remaining: int) -> None:
        if self.enabled:
            done = self._bar.tasks[0].completed + n
            self._bar.update(self._task, completed=done, total=done + remaining)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()
