"""The driver's loop in this process: real shard workers behind a fake executor.

No worker processes start, so each test runs in well under a second: the
executor runs each visit at once on an in-process ``ShardWorker`` and hands the
results back in a seeded order (a few at a time, as real workers finish), and
can make a visit "crash" as a killed worker would. The store is a real SQLite
file and the checkpoints real files. The end-to-end tests through worker
processes (test_experiment, test_recovery, test_equivalence...) stay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper._driver import Driver
from modelhopper.commands import CommandKind, submit
from modelhopper.data._sharding import ShardInfo, open_shard, write_shards
from modelhopper.errors import AllMSTsFailedError
from modelhopper.executors import (
    BaseExecutor,
    StateLostError,
    StateRef,
    StateSource,
    VisitResult,
    VisitTask,
)
from modelhopper.executors._worker import ShardWorker
from modelhopper.scheduling import StepKind
from modelhopper.store import EventKind, ExperimentRecord, RunStatus, SQLStore
from modelhopper.store._checkpoints import CheckpointManager

N_WORKERS = 2


def estimator(params: dict[str, Any]) -> mh.Estimator:
    if params.get("fail"):
        raise RuntimeError("this MST is meant to fail")
    model = nn.Sequential(nn.Linear(4, params.get("hidden", 8)), nn.ReLU(),
                          nn.Linear(params.get("hidden", 8), 2))  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=params.get("lr", 0.1))
    return mh.Estimator(model, optimizer, nn.CrossEntropyLoss(), metrics=["accuracy"],
                        batch_size=16)  # fmt: skip


class InProcessExecutor(BaseExecutor):
    """Runs visits at once in this process; returns finished ones in a seeded order.

    ``crash``: the numbers (1-based, in submission order) of the visits whose worker
    "dies": the visit is lost, its worker replaced by a fresh one (an empty cache).
    ``interrupt_after``: raise KeyboardInterrupt from ``wait`` once this many visits
    were handed back (the driver stops as if killed; what it recorded stays).
    ``polls``: ``poll`` hands back finished visits too (a seeded part of them), as
    real workers finish while the driver records.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        crash: Sequence[int] = (),
        interrupt_after: int | None = None,
        polls: bool = False,
    ) -> None:
        self._rng = np.random.default_rng(seed)
        self._crash = set(crash)
        self._interrupt_after = interrupt_after
        self._polls = polls
        self._workers: list[ShardWorker] = []
        self._done: list[VisitResult] = []
        self._factory: Callable[..., Any] | None = None
        self._shards: list[ShardInfo] = []
        self.n_submitted = self.n_returned = 0
        self.sources: list[StateSource] = []  # of every task, in submission order
        self.tasks: list[VisitTask] = []  # every task, in submission order

    def start(self, shards: Sequence[ShardInfo], factory: Callable[..., Any]) -> None:
        self._shards, self._factory = list(shards), factory
        self._workers = [self._worker(i) for i in range(len(shards))]

    def _worker(self, index: int) -> ShardWorker:
        info = self._shards[index]
        assert self._factory is not None
        return ShardWorker(index, {index: open_shard(info.path)}, len(self._shards), self._factory)

    def submit(self, worker: int, task: VisitTask) -> None:
        assert all(r.worker != worker for r in self._done), "a busy worker got a visit"
        self.n_submitted += 1
        self.sources.append(task.source)
        self.tasks.append(task)
        if self.n_submitted in self._crash:
            self._workers[worker] = self._worker(worker)
            self._done.append(VisitResult(worker, task.mst_id, crashed=True))
        else:
            self._done.append(self._workers[worker].run(task))

    def wait(self) -> list[VisitResult]:
        assert self._done, "the driver waits with no visit in flight"
        if self._interrupt_after is not None and self.n_returned >= self._interrupt_after:
            raise KeyboardInterrupt
        n = int(self._rng.integers(1, len(self._done) + 1))
        order = self._rng.permutation(len(self._done))
        back = [self._done[i] for i in order[:n]]
        self._done = [self._done[i] for i in order[n:]]
        self.n_returned += len(back)
        return back

    def poll(self) -> list[VisitResult]:
        if not self._polls or not self._done:
            return []
        n = int(self._rng.integers(0, len(self._done) + 1))
        back, self._done = self._done[:n], self._done[n:]
        self.n_returned += len(back)
        return back

    def shutdown(self) -> None:
        self._workers = []

    @property
    def resident_shard_bytes(self) -> list[int]:
        return [info.nbytes for info in self._shards]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[ShardInfo]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    data = mh.Dataset.from_numpy(x[:160], y[:160], x[160:], y[160:])
    return write_shards(data, N_WORKERS, tmp_path_factory.mktemp("shards"), seed=0)


class Run:
    """One run's driver, store and executor, set up as ``run_search`` sets them up."""

    def __init__(
        self, procedure: mh.BaseProcedure, directory: Path, executor: InProcessExecutor
    ) -> None:
        self.procedure, self.directory, self.executor = procedure, directory, executor
        self.store = SQLStore(path=directory / "runs.db")
        self.name = "run"
        self.store.create_experiment(ExperimentRecord(
            name=self.name, status=RunStatus.RUNNING, procedure=type(procedure).__name__,
            spec=procedure.settings(), space=procedure.space.to_dict(), seed=procedure.seed,
            n_workers=N_WORKERS, run_dir=str(directory),
        ))  # fmt: skip

    def driver(self, executor: InProcessExecutor | None = None) -> Driver:
        return Driver(
            name=self.name, procedure=self.procedure, executor=executor or self.executor,
            store=self.store, checkpoints=CheckpointManager(self.directory / "checkpoints"),
            n_workers=N_WORKERS,
        )  # fmt: skip

    def start(self, shards: list[ShardInfo]) -> mh.RunStats:
        driver = self.driver()
        self.procedure.on_start(driver)
        self.executor.start(shards, self.procedure.make_estimator)
        return driver.run()

    def metrics(self) -> dict[tuple[int, int], dict[str, float]]:
        """Each epoch's metrics but the measured train_seconds (which differs run to run)."""
        return {
            (e.mst_id, e.epoch): {k: v for k, v in e.metrics.items() if k != "train_seconds"}
            for e in self.store.list_epochs(self.name)
        }

    def statuses(self) -> dict[int, str]:
        return {m.mst_id: m.status.value for m in self.store.list_msts(self.name)}

    def events(self, kind: EventKind) -> list[Any]:
        return [e for e in self.store.list_events(self.name) if e.kind is kind]


def grid(**kwargs: Any) -> mh.GridSearch:
    space = {"hidden": mh.grid([4, 8]), "lr": mh.grid([0.05, 0.2])}
    return mh.GridSearch(estimator, space, epochs=kwargs.pop("epochs", 2), **kwargs)


class _DecidingGrid(mh.GridSearch):
    def on_epoch_end(self, trainer: Any, result: Any) -> mh.Decision:
        return mh.Decision.CONTINUE  # decides nothing, but may: visits end at epochs' ends


def test_where_a_procedure_decides_visits_end_with_the_epoch_and_the_worker_keeps_the_state(
    shards, tmp_path
):
    # One MST, so no other takes its worker between two of its visits.
    procedure = _DecidingGrid(estimator, {"hidden": 4, "lr": 0.05}, epochs=2)
    run = Run(procedure, tmp_path, InProcessExecutor())
    stats = run.start(shards)

    assert run.statuses() == {0: "completed"}
    for task in run.executor.tasks:  # none goes on past an epoch's last evaluation
        last_evals = [s for s in task.steps if s.kind.value == "eval" and s.is_last(s.kind, 2)]
        assert not last_evals or task.steps[-1] == last_evals[0]
    assert stats.n_visits == 2 * 3  # per epoch: train, train + evaluate, evaluate
    # The next epoch starts where the last evaluation ran: the state is already there.
    fresh, sent, held = StateSource.FRESH, StateSource.SENT, StateSource.HELD
    assert run.executor.sources == [fresh, sent, sent, held, sent, sent]


def test_the_loop_trains_every_mst_to_its_budget_and_records_every_step(shards, tmp_path):
    run = Run(grid(), tmp_path, InProcessExecutor())
    stats = run.start(shards)

    assert run.statuses() == dict.fromkeys(range(4), "completed")
    steps = run.store.list_steps(run.name)
    assert len(steps) == stats.n_steps == 4 * 2 * (N_WORKERS + N_WORKERS)  # MSTs x epochs x
    for (mst_id, epoch), _ in run.metrics().items():  # every shard trained and evaluated once
        mine = [s for s in steps if (s.mst_id, s.epoch) == (mst_id, epoch)]
        assert sorted((s.kind.value, s.shard) for s in mine) == [
            ("eval", 0), ("eval", 1), ("train", 0), ("train", 1),
        ]  # fmt: skip
    assert sorted(run.metrics()) == [(m, e) for m in range(4) for e in range(2)]
    assert stats.n_visits == run.executor.n_submitted
    sources = run.executor.sources  # each MST built once; a state sent exactly on a hop
    assert sources.count(StateSource.FRESH) == 4
    assert sources.count(StateSource.SENT) == stats.n_hops > 0
    # A grid decides nothing: an epoch's last evaluation goes on into the next epoch's
    # training on that worker, so only each MST's final evaluation is a visit of its own.
    eval_only = [t for t in run.executor.tasks if all(s.kind.value == "eval" for s in t.steps)]
    assert sorted((t.mst_id, t.steps[-1].epoch) for t in eval_only) == [(m, 1) for m in range(4)]
    assert StateSource.HELD not in sources
    assert stats.resident_shard_bytes == tuple(s.nbytes for s in shards)
    for mst in run.store.list_msts(run.name):
        assert mst.checkpoint and Path(mst.checkpoint).is_file()
        assert mst.best_checkpoint and Path(mst.best_checkpoint).is_file()
    assert len(run.events(EventKind.MST_COMPLETED)) == 4


def test_results_do_not_depend_on_the_order_visits_finish(shards, tmp_path):
    first = Run(grid(), tmp_path / "a", InProcessExecutor(seed=1))
    second = Run(grid(), tmp_path / "b", InProcessExecutor(seed=2))
    first.start(shards)
    second.start(shards)
    assert first.metrics() == second.metrics()
    assert len(first.metrics()) == 8


def test_a_crashed_visit_runs_again_and_changes_no_result(shards, tmp_path):
    clean = Run(grid(), tmp_path / "clean", InProcessExecutor())
    crashed = Run(grid(), tmp_path / "crashed", InProcessExecutor(crash=(2, 5, 11)))
    clean.start(shards)
    crashed.start(shards)
    assert crashed.metrics() == clean.metrics()
    assert len(crashed.events(EventKind.WORKER_RESTARTED)) == 3


def test_a_failing_mst_fails_alone_and_all_failing_raises(shards, tmp_path):
    space = {"hidden": 8, "fail": mh.grid([False, True])}
    run = Run(mh.GridSearch(estimator, space, epochs=2), tmp_path / "one", InProcessExecutor())
    with pytest.warns(UserWarning, match="MST 1 .* failed: .*meant to fail; the others go on"):
        run.start(shards)
    assert run.statuses() == {0: "completed", 1: "failed"}
    (failed,) = [m for m in run.store.list_msts(run.name) if m.mst_id == 1]
    assert "meant to fail" in (failed.error or "")

    doomed = mh.GridSearch(estimator, {"fail": mh.grid([True])}, epochs=1)
    run = Run(doomed, tmp_path / "all", InProcessExecutor())
    with pytest.warns(UserWarning), pytest.raises(AllMSTsFailedError, match="all 1 MSTs failed"):
        run.start(shards)


class _LostState(StateRef):
    """A state gone before the driver saved it (a Ray object whose node died)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def fetch(self) -> bytes:
        raise StateLostError("the Ray object holding it went with its node")


class _LosesAState(InProcessExecutor):
    """MST 1's first state is lost before the driver saves it."""

    lost = False

    def submit(self, worker: int, task: VisitTask) -> None:
        super().submit(worker, task)
        result = self._done[-1]
        if result.mst_id == 1 and isinstance(result.state, bytes) and not self.lost:
            self.lost = True
            self._done[-1] = dataclasses.replace(result, state=_LostState(len(result.state)))


def test_an_mst_whose_state_is_lost_before_it_is_saved_trains_again_to_the_same_result(
    shards, tmp_path
):
    """Its visits since its last checkpoint are not recorded and run again from it."""
    space = {"hidden": 8, "lr": mh.grid([0.05, 0.2])}
    clean = Run(mh.GridSearch(estimator, space, epochs=2), tmp_path / "clean",
                InProcessExecutor())  # fmt: skip
    clean.start(shards)
    executor = _LosesAState()
    run = Run(mh.GridSearch(estimator, space, epochs=2), tmp_path / "lost", executor)
    with pytest.warns(UserWarning, match="MST 1's state .* lost before it was saved .* again"):
        run.start(shards)
    assert executor.lost
    assert run.statuses() == {0: "completed", 1: "completed"}
    assert run.metrics() == clean.metrics()
    (rolled,) = run.events(EventKind.MST_ROLLED_BACK)
    assert rolled.mst_id == 1 and "went with its node" in rolled.detail["why"]
    steps = [(s.epoch, s.kind, s.shard) for s in run.store.list_steps(run.name) if s.mst_id == 1]
    assert sorted(steps) == sorted(
        (s.epoch, s.kind, s.shard) for s in clean.store.list_steps(clean.name) if s.mst_id == 1
    )  # every step recorded once


class _LosesALaterState(InProcessExecutor):
    """ASHA: MST 2's state after its second visit that trains is lost before the driver
    saves it (its next visit, begun from it, comes back as RayExecutor's would)."""

    lost = False
    visits = 0

    def submit(self, worker: int, task: VisitTask) -> None:
        if isinstance(task.state, _LostState):  # as RayExecutor reports a lost input state
            self.n_submitted += 1
            self._done.append(VisitResult(worker, task.mst_id, crashed=True, state_lost=True))
            return
        super().submit(worker, task)
        result = self._done[-1]
        trains = any(o.step.kind is StepKind.TRAIN for o in result.outcomes)
        if result.mst_id == 2 and isinstance(result.state, bytes) and trains:
            self.visits += 1
            if self.visits == 2 and not self.lost:
                self.lost = True
                self._done[-1] = dataclasses.replace(result, state=_LostState(len(result.state)))


def test_a_procedure_deciding_from_epochs_sees_a_rolled_back_mst_as_if_nothing_was_lost(
    shards, tmp_path
):
    space = {"hidden": mh.choice([4, 8, 16]), "lr": mh.loguniform(0.01, 0.5)}

    def asha():
        return mh.ASHA(estimator, space, max_epochs=4, n_msts=6, reduction_factor=2, seed=3)

    clean = Run(asha(), tmp_path / "clean", InProcessExecutor())
    clean.start(shards)
    executor = _LosesALaterState()
    run = Run(asha(), tmp_path / "lost", executor)
    with pytest.warns(UserWarning, match="MST 2's state .* lost before it was saved"):
        run.start(shards)
    assert executor.lost
    # ASHA promotes on whichever epochs have finished: the rollback's delay may change
    # which MSTs go on; every epoch both runs trained is the same.
    got, want = run.metrics(), clean.metrics()
    assert run.statuses()[2] != "failed"
    assert (2, 1) in got and {k: got[k] for k in got.keys() & want.keys()} == {
        k: want[k] for k in got.keys() & want.keys()
    }
    decided = [(e.mst_id, e.detail["epoch"]) for e in run.events(EventKind.EPOCH_DECIDED)]
    assert sorted(decided) == sorted(set(decided)) == sorted(run.metrics())  # each once


def test_asha_stops_msts_and_marks_every_decided_epoch(shards, tmp_path):
    space = {"hidden": mh.choice([4, 8, 16]), "lr": mh.loguniform(0.01, 0.5)}
    asha = mh.ASHA(estimator, space, max_epochs=4, n_msts=6, reduction_factor=2, seed=3)
    run = Run(asha, tmp_path, InProcessExecutor())
    run.start(shards)

    assert set(run.statuses().values()) == {"completed"}
    epochs = [sum(m == mst for m, _ in run.metrics()) for mst in range(6)]
    assert max(epochs) == 4 and min(epochs) == 1  # promoted to the top rung, or left at rung 0
    decided = {(e.mst_id, e.detail["epoch"]) for e in run.events(EventKind.EPOCH_DECIDED)}
    assert decided == set(run.metrics())  # every epoch decided once, after its commit
    assert len(run.events(EventKind.EPOCH_DECIDED)) == len(decided)


def test_commands_act_through_the_drivers_public_interface(shards, tmp_path):
    run = Run(grid(epochs=1), tmp_path, InProcessExecutor())
    driver = run.driver()
    run.procedure.on_start(driver)
    assert driver.active() == [0, 1, 2, 3]
    submit(run.store, run.name, CommandKind.STOP, {"mst_id": 3})
    submit(run.store, run.name, CommandKind.CLONE,
           {"mst_id": 0, "changes": {"lr": 0.2}, "warm_start": False})  # fmt: skip
    submit(run.store, run.name, CommandKind.ADD, {"params": {"hidden": 8, "lr": 0.05}})
    submit(run.store, run.name, CommandKind.STOP, {"mst_id": 3})  # rejected: already stopped
    run.executor.start(shards, run.procedure.make_estimator)
    driver.run()

    commands = run.store.list_commands(run.name)
    assert [(c.kind, c.status.value, c.new_mst_id) for c in commands] == [
        ("stop", "applied", None), ("clone", "applied", 4), ("add", "applied", 5),
        ("stop", "rejected", None),
    ]  # fmt: skip
    assert "MST 3 is already stopped" in (commands[-1].message or "")
    assert run.statuses() == {0: "completed", 1: "completed", 2: "completed", 3: "stopped",
                              4: "completed", 5: "completed"}  # fmt: skip
    msts = {m.mst_id: m for m in run.store.list_msts(run.name)}
    assert (msts[4].parent, msts[4].params) == (0, {"hidden": 4, "lr": 0.2})
    assert [m.id for m in driver.msts()] == list(range(6))
    assert driver.active() == []  # completed or stopped: none is pending or running


def test_a_restored_driver_finishes_as_an_uninterrupted_one(shards, tmp_path):
    whole = Run(grid(epochs=3), tmp_path / "whole", InProcessExecutor())
    whole.start(shards)

    cut = Run(grid(epochs=3), tmp_path / "cut", InProcessExecutor(interrupt_after=9))
    with pytest.raises(KeyboardInterrupt):
        cut.start(shards)
    done_before = len(cut.metrics())
    assert 0 < done_before < len(whole.metrics())

    again = InProcessExecutor(seed=5)
    driver = cut.driver(again)
    driver.restore(cut.store.list_msts(cut.name))
    statuses = cut.statuses()
    assert [m.id for m in driver.msts()] == sorted(statuses)
    assert set(driver.active()) == {i for i, s in statuses.items() if s in ("pending", "running")}
    cut.procedure.on_start(driver)  # adds nothing: the MSTs are there
    again.start(shards, cut.procedure.make_estimator)
    driver.run()
    assert cut.metrics() == whole.metrics()
    assert len(cut.store.list_steps(cut.name)) == len(whole.store.list_steps(whole.name))


@pytest.mark.parametrize("interrupt_after", [7, 10, 13, 16, 19, 22])
def test_a_crash_noticed_while_recording_keeps_the_checkpoints_in_step(
    shards, tmp_path, monkeypatch, interrupt_after
):
    """A crash that arrives while the driver records (its workers served meanwhile) is
    handled after that record: visits that finished since are recorded after the ones
    before them, so the store's latest checkpoint is always the state after the last
    recorded step, and a run resumed from any moment ends as an uninterrupted one."""
    monkeypatch.setattr("modelhopper._driver.RECORD_INTERVAL_SECONDS", 0.0)  # record each turn
    whole = Run(grid(epochs=3), tmp_path / "whole", InProcessExecutor())
    whole.start(shards)

    crashing = InProcessExecutor(seed=3, crash=(4, 9, 14, 19), polls=True,
                                 interrupt_after=interrupt_after)  # fmt: skip
    cut = Run(grid(epochs=3), tmp_path / "cut", crashing)
    with pytest.raises(KeyboardInterrupt):
        cut.start(shards)

    again = InProcessExecutor(seed=5, polls=True)
    driver = cut.driver(again)
    driver.restore(cut.store.list_msts(cut.name))
    cut.procedure.on_start(driver)
    again.start(shards, cut.procedure.make_estimator)
    driver.run()
    assert cut.metrics() == whole.metrics()


class _AddsAtTheEnd(InProcessExecutor):
    """Submits an ADD command the first time every visit has been handed back."""

    def __init__(self, run_of: Callable[[], Run]) -> None:
        super().__init__()
        self.run_of, self.sent = run_of, False

    def wait(self) -> list[VisitResult]:
        back = super().wait()
        if not self._done and not self.sent:
            run = self.run_of()
            submit(run.store, run.name, CommandKind.ADD, {"params": {"hidden": 8, "lr": 0.05}})
            self.sent = True
        return back


def test_a_command_that_comes_as_the_work_runs_out_is_still_applied(shards, tmp_path, monkeypatch):
    monkeypatch.setattr("modelhopper._driver.COMMAND_POLL_SECONDS", 3600.0)  # one look a run
    holder: list[Run] = []
    run = Run(grid(epochs=1), tmp_path, _AddsAtTheEnd(lambda: holder[0]))
    holder.append(run)
    run.start(shards)
    (command,) = run.store.list_commands(run.name)
    assert (command.status.value, command.new_mst_id) == ("applied", 4)
    assert run.statuses() == dict.fromkeys(range(5), "completed")  # the added one trained


def test_waiting_for_a_command_of_a_run_that_ended_fails_at_once(tmp_path):
    from modelhopper.commands import wait_for

    run = Run(grid(), tmp_path, InProcessExecutor())
    command = submit(run.store, run.name, CommandKind.ADD, {"params": {"hidden": 8, "lr": 0.05}})
    run.store.set_experiment_status(run.name, RunStatus.COMPLETED)
    with pytest.raises(mh.ConfigError, match="ended before command add was applied"):
        wait_for(run.store, run.name, command, timeout=30)


def test_checkpoint_folders_are_flushed_before_the_records_that_name_them_commit(
    shards, tmp_path, monkeypatch
):
    """A power loss after a commit must find every checkpoint it names: each file's
    rename is flushed (its folder fsynced) before the transaction that refers to it."""
    run = Run(grid(), tmp_path, InProcessExecutor())
    flushed: set[Path] = set()
    real_sync = CheckpointManager.sync

    def sync(self: CheckpointManager) -> None:
        pending = set(self._unsynced)
        real_sync(self)
        flushed.update(pending)

    monkeypatch.setattr(CheckpointManager, "sync", sync)
    real_record = run.store.record_visits
    named: list[str] = []

    def record_visits(name, records):
        for record in records:
            for path in filter(None, record.mst_fields.values()):
                if str(path).endswith(".state"):
                    assert Path(path).parent in flushed, f"{path} committed before its folder"
                    named.append(path)
        return real_record(name, records)

    monkeypatch.setattr(run.store, "record_visits", record_visits)
    run.start(shards)
    assert len(named) >= 8  # latest and best of 4 MSTs at least


class InProcessGroups(InProcessExecutor):
    """``InProcessExecutor`` that also runs group visits (hybrid mode): once every member's
    task is in, the members run in threads, meeting through a file, as worker processes
    would; a member that fails first aborts the group for the others, as the driver does."""

    groups = True

    def __init__(self, folder: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._folder, self._n_groups = folder, 0
        self._members: dict[int, list[tuple[int, VisitTask]]] = {}

    def group_rendezvous(self) -> str:
        self._n_groups += 1
        return str(self._folder / f"group-{self._n_groups}")

    def abort_group(self, rendezvous: str) -> None:
        pass  # the members ran to their end in submit: nobody waits any more

    def submit(self, worker: int, task: VisitTask) -> None:
        if task.group is None:
            return super().submit(worker, task)
        self.n_submitted += 1
        self.sources.append(task.source)
        self.tasks.append(task)
        members = self._members.setdefault(task.mst_id, [])
        members.append((worker, task))
        if len(members) == task.group.size:
            del self._members[task.mst_id]
            self._done += _run_members(self._workers, members)


def _run_members(workers: list[ShardWorker], members: list[tuple[int, VisitTask]]):
    import threading

    from modelhopper.executors._group import abort

    results: dict[int, VisitResult] = {}

    def run(worker: int, task: VisitTask) -> None:
        results[worker] = workers[worker].run(task)
        if results[worker].error is not None:
            assert task.group is not None
            abort(task.group.rendezvous)

    threads = [threading.Thread(target=run, args=member) for member in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return [results[worker] for worker, _ in members]


@pytest.mark.parametrize("seed", range(4))
def test_a_group_that_fails_while_the_driver_records_frees_every_member(shards, tmp_path, seed):
    """Results arrive while the driver records (``polls``): a failed group epoch waits
    for that record to end before it settles, and until then none of its members is
    idle (the scheduler still has them all busy)."""
    space = {"hidden": 4, "lr": 0.05, "fail": mh.grid([False, True])}
    procedure = _DecidingGrid(estimator, space, epochs=2, hybrid="on")
    executor = InProcessGroups(tmp_path, seed=seed, polls=True)
    run = Run(procedure, tmp_path, executor)
    with pytest.warns(UserWarning, match="this MST is meant to fail"):
        run.start(shards)
    assert run.statuses() == {0: "completed", 1: "failed"}
    assert all(task.group is not None for task in executor.tasks)
    assert len(run.events(EventKind.GROUP_EPOCH)) == 2  # MST 0's two epochs
