"""The conformance suite every ``BaseStore`` implementation passes (Optuna's ``StorageTestCase``).

Subclass it in a test module and give it a ``store`` fixture that yields a
fresh, empty store; pytest collects the inherited tests::

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path):
            with MyStore(tmp_path / "runs.db") as store:
                yield store

Contracts checked beyond the docstrings of ``BaseStore``: timestamps are
filled in by the store and come back as aware UTC datetimes; JSON fields keep
NaN and infinities; re-recording an epoch replaces the stored one (a resumed
visit) while a step is recorded once; an event about an MST the experiment
lacks is an error; a command is applied or rejected once; every failure is a
``StoreError``.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelhopper._vocabulary import MSTStatus, StepKind
from modelhopper.errors import StoreError
from modelhopper.store import (
    BaseStore,
    CommandStatus,
    EpochRecord,
    EventKind,
    ExperimentRecord,
    MSTRecord,
    RunStatus,
    StepRecord,
)

__all__ = ["StoreConformance"]

# A store may stamp times on a server whose clock is a little off ours.
_CLOCK_SLACK = timedelta(seconds=2)


# -- records to store ---------------------------------------------------------------
def _experiment(name: str = "run-a", **changes: Any) -> ExperimentRecord:
    record = ExperimentRecord(
        name=name,
        status=RunStatus.RUNNING,
        procedure="RandomSearch",
        spec={"epochs": 3, "metric": "val_loss", "direction": "min", "n_msts": 4},
        space={
            "lr": {"type": "loguniform", "low": 1e-4, "high": 0.1},
            "layers": {"type": "choice", "values": [1, 2, [3, 4]]},
            "note": "λ → ✓",
        },
        seed=2**62 + 7,
        n_workers=2,
        run_dir=f"/runs/{name}",
        provenance={"git": {"commit": "abc123", "dirty": False}, "gpu": None, "cpus": 8},
    )
    return dataclasses.replace(record, **changes)


def _mst(mst_id: int, **changes: Any) -> MSTRecord:
    record = MSTRecord(
        mst_id=mst_id,
        params={"lr": 0.01 * (mst_id + 1), "layers": 2, "act": "relu", "dropout": None},
        seed=1_000 + mst_id,
        status=MSTStatus.PENDING,
        n_epochs=3,
    )
    return dataclasses.replace(record, **changes)


def _step(mst_id: int, epoch: int, shard: int, kind: str = "train", **changes: Any) -> StepRecord:
    record = StepRecord(
        mst_id=mst_id,
        epoch=epoch,
        kind=StepKind(kind),
        shard=shard,
        position=shard,
        worker=shard % 2,
        n=100 + shard,
        loss_sum=12.5 + shard,
        metric_sums={"accuracy": 80.0 + shard},
        seconds=0.25 * (shard + 1),
    )
    return dataclasses.replace(record, **changes)


def _epoch(mst_id: int, number: int, **changes: Any) -> EpochRecord:
    record = EpochRecord(
        mst_id=mst_id,
        epoch=number,
        metrics={"train_loss": 0.5, "val_loss": 0.4 + number, "val_accuracy": 0.9},
        train_order=[1, 0],
        eval_order=[0, 1],
        train_seconds=1.5,
        eval_seconds=0.5,
    )
    return dataclasses.replace(record, **changes)


def _now() -> datetime:
    return datetime.now(UTC)


def _assert_utc_between(value: datetime | None, before: datetime, after: datetime) -> None:
    assert value is not None, "the store must fill in the timestamp"
    assert value.utcoffset() == timedelta(0), f"{value!r} is not an aware UTC datetime"
    assert before - _CLOCK_SLACK <= value <= after + _CLOCK_SLACK


def _without_times(record: Any) -> Any:
    names = {f.name for f in dataclasses.fields(record)}
    times = {n: None for n in ("created_at", "updated_at", "finished_at") if n in names}
    return dataclasses.replace(record, **times)


class StoreConformance:
    """Tests of every ``BaseStore`` method; subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> BaseStore:
        pytest.fail("a subclass of StoreConformance must override the `store` fixture")

    # -- experiments -----------------------------------------------------------------
    def test_experiment_round_trip(self, store: BaseStore) -> None:
        before = _now()
        created = store.create_experiment(_experiment())
        after = _now()
        got = store.get_experiment("run-a")
        assert _without_times(got) == _experiment()
        assert got.status is RunStatus.RUNNING
        _assert_utc_between(got.created_at, before, after)
        assert got.updated_at == got.created_at
        assert (created.created_at, created.updated_at) == (got.created_at, got.updated_at)
        assert _without_times(created) == _experiment()

    def test_create_experiment_keeps_given_created_at(self, store: BaseStore) -> None:
        then = datetime(2020, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
        store.create_experiment(_experiment(created_at=then))
        got = store.get_experiment("run-a")
        assert got.created_at == then
        assert got.updated_at == then

    def test_create_experiment_with_a_taken_name_raises(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        with pytest.raises(StoreError, match=r"'run-a'.*pick another run_name.*resume"):
            store.create_experiment(_experiment(seed=3))
        assert store.get_experiment("run-a").seed == _experiment().seed
        assert len(store.list_experiments()) == 1

    def test_get_unknown_experiment_names_the_known_ones(self, store: BaseStore) -> None:
        for i in range(12):
            store.create_experiment(_experiment(f"run-{i:02d}"))
        with pytest.raises(StoreError, match=r"'nope'") as raised:
            store.get_experiment("nope")
        message = str(raised.value)
        shown = [f"run-{i:02d}" for i in range(2, 12)]  # the 10 newest
        assert all(name in message for name in shown), message
        assert "run-00" not in message and "run-01" not in message
        assert "2 more" in message

    def test_get_experiment_from_an_empty_store_raises(self, store: BaseStore) -> None:
        with pytest.raises(StoreError, match=r"'nope'.*no runs"):
            store.get_experiment("nope")

    def test_list_experiments_is_newest_first(self, store: BaseStore) -> None:
        assert store.list_experiments() == []
        for name in ("first", "second", "third"):
            store.create_experiment(_experiment(name))
        old = datetime(2001, 1, 1, tzinfo=UTC)
        store.create_experiment(_experiment("imported", created_at=old))
        listed = store.list_experiments()
        assert [e.name for e in listed] == ["third", "second", "first", "imported"]
        assert _without_times(listed[0]) == _experiment("third")

    def test_set_experiment_status(self, store: BaseStore) -> None:
        created = store.create_experiment(_experiment())
        before = _now()
        store.set_experiment_status("run-a", RunStatus.COMPLETED)
        got = store.get_experiment("run-a")
        assert got.status is RunStatus.COMPLETED
        assert got.created_at == created.created_at
        _assert_utc_between(got.updated_at, before, _now())
        store.set_experiment_status("run-a", RunStatus.FAILED)
        assert store.get_experiment("run-a").status is RunStatus.FAILED

    def test_set_status_of_unknown_experiment_raises(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        with pytest.raises(StoreError, match=r"'nope'.*'run-a'"):
            store.set_experiment_status("nope", RunStatus.COMPLETED)
        with pytest.raises(StoreError, match=r"RunStatus"):
            store.set_experiment_status("run-a", "bogus")  # type: ignore[arg-type]
        assert store.get_experiment("run-a").status is RunStatus.RUNNING

    # -- batches ------------------------------------------------------------------------
    def test_a_batch_commits_its_writes_together(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        with store.batch():
            store.add_msts("run-a", [_mst(0)])
            store.update_mst("run-a", 0, status="stopped", n_epochs=5)  # sees the add
            with store.batch():  # nested: joins the outer one
                store.add_event("run-a", EventKind.EPOCH_DECIDED, mst_id=0, detail={"epoch": 2})
        (mst,) = store.list_msts("run-a")
        assert (mst.status, mst.n_epochs) == ("stopped", 5)
        (event,) = store.list_events("run-a")
        assert (event.kind, event.mst_id) == (EventKind.EPOCH_DECIDED, 0)
        assert event.detail == {"epoch": 2}

    def test_a_batch_that_fails_writes_nothing(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0)])
        with pytest.raises(RuntimeError, match="crash"), store.batch():
            store.update_mst("run-a", 0, status="stopped")
            store.add_msts("run-a", [_mst(1)])
            raise RuntimeError("crash")
        with pytest.raises(StoreError, match=r"already has MSTs with mst_id \[0\]"), store.batch():
            store.add_msts("run-a", [_mst(2)])
            store.add_msts("run-a", [_mst(0)])  # a taken id
        assert [(m.mst_id, m.status) for m in store.list_msts("run-a")] == [(0, "pending")]
        assert store.list_events("run-a") == []
        store.add_msts("run-a", [_mst(1)])  # the store goes on after a failed batch
        assert [m.mst_id for m in store.list_msts("run-a")] == [0, 1]

    # -- MSTs ---------------------------------------------------------------------------
    def test_msts_round_trip_ordered_by_id(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        msts = [
            _mst(2, seed=2**63 - 1),
            _mst(
                0, status=MSTStatus.RUNNING, n_epochs=9, checkpoint="/c/0", best_checkpoint="/c/0b"
            ),
            _mst(
                1, parent=0, status=MSTStatus.FAILED, error="NaN loss", traceback="Traceback ...\n"
            ),
        ]
        before = _now()
        store.add_msts("run-a", msts)
        after = _now()
        got = store.list_msts("run-a")
        assert [m.mst_id for m in got] == [0, 1, 2]
        assert [_without_times(m) for m in got] == [msts[1], msts[2], msts[0]]
        assert [m.status for m in got] == [MSTStatus.RUNNING, MSTStatus.FAILED, MSTStatus.PENDING]
        assert all(type(m.status) is MSTStatus for m in got)  # the enum, not its string
        for m in got:
            _assert_utc_between(m.created_at, before, after)
            assert m.updated_at == m.created_at

    def test_add_msts_with_a_taken_id_keeps_none_of_them(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0), _mst(1)])
        with pytest.raises(StoreError, match=r"\b1\b"):
            store.add_msts("run-a", [_mst(2), _mst(1)])
        with pytest.raises(StoreError, match=r"\b3\b"):
            store.add_msts("run-a", [_mst(3), _mst(3)])
        assert [m.mst_id for m in store.list_msts("run-a")] == [0, 1]
        # many at once (a grid), the taken ids far down the list: every one is named
        many = [_mst(i) for i in range(2, 1500)] + [_mst(1), _mst(0)]
        with pytest.raises(StoreError, match=r"mst_id \[0, 1\].*next free one is 2"):
            store.add_msts("run-a", many)
        store.add_msts("run-a", many[:-2])
        assert len(store.list_msts("run-a")) == 1500

    def test_msts_belong_to_their_experiment(self, store: BaseStore) -> None:
        store.create_experiment(_experiment("run-a"))
        store.create_experiment(_experiment("run-b"))
        store.add_msts("run-a", [_mst(0), _mst(1)])
        store.add_msts("run-b", [_mst(0, params={"lr": 0.5})])
        store.update_mst("run-b", 0, status="completed")
        assert [m.mst_id for m in store.list_msts("run-a")] == [0, 1]
        assert store.list_msts("run-a")[0].status == "pending"
        assert [(m.params, m.status) for m in store.list_msts("run-b")] == [
            ({"lr": 0.5}, "completed")
        ]
        with pytest.raises(StoreError, match=r"'nope'"):
            store.add_msts("nope", [_mst(0)])
        with pytest.raises(StoreError, match=r"'nope'"):
            store.list_msts("nope")

    def test_update_mst_sets_each_field(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0), _mst(1)])
        created = store.list_msts("run-a")[0].created_at
        changes: dict[str, Any] = {
            "params": {"lr": 0.3, "layers": [1, 2]},
            "seed": 77,
            "status": "failed",
            "parent": 1,
            "n_epochs": 12,
            "checkpoint": "/c/latest",
            "best_checkpoint": "/c/best",
            "error": "out of memory",
            "traceback": "Traceback (most recent call last): ...",
        }
        before = _now()
        store.update_mst("run-a", 0, **changes)
        got, untouched = store.list_msts("run-a")
        assert _without_times(got) == _mst(0, **changes)
        assert got.created_at == created
        _assert_utc_between(got.updated_at, before, _now())
        assert _without_times(untouched) == _mst(1)
        store.update_mst("run-a", 0, checkpoint=None, error=None)
        got = store.list_msts("run-a")[0]
        assert (got.checkpoint, got.error, got.best_checkpoint) == (None, None, "/c/best")

    def test_update_unknown_mst_raises(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0)])
        with pytest.raises(StoreError, match=r"mst_id=9"):
            store.update_mst("run-a", 9, status="running")
        with pytest.raises(StoreError, match=r"colour"):
            store.update_mst("run-a", 0, colour="red")
        with pytest.raises(StoreError, match=r"'nope'"):
            store.update_mst("nope", 0, status="running")
        with pytest.raises(StoreError, match=r"MST status must be a MSTStatus.*'paused'"):
            store.update_mst("run-a", 0, status="paused")
        with pytest.raises(StoreError, match=r"status of MST 1 .*'paused'"):
            store.add_msts("run-a", [_mst(1, status="paused")])
        assert [_without_times(m) for m in store.list_msts("run-a")] == [_mst(0)]

    # -- visits: steps, epochs, MST fields, events -----------------------------------
    def test_record_visit_round_trip(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0), _mst(1)])
        finished = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
        # Finish order differs from shard order: the store keeps the order of recording.
        first = [_step(0, 0, 1), _step(0, 0, 0, finished_at=finished)]
        before = _now()
        store.record_visit(
            "run-a", 0, first, [], {"status": "running", "checkpoint": "/c/0-2"},
            [(EventKind.HOPPED, {"worker": 1, "steps": 2})],
        )  # fmt: skip
        store.record_visit("run-a", 1, [_step(1, 0, 0)], [], {"checkpoint": "/c/1-1"})
        second = [_step(0, 0, 1, kind="eval"), _step(0, 0, 0, kind="eval")]
        store.record_visit(
            "run-a", 0, second, [_epoch(0, 0)], {"best_checkpoint": "/c/0-2"},
            [(EventKind.HOPPED, {"worker": 0, "steps": 2}), (EventKind.EPOCH_END, {"epoch": 0})],
        )  # fmt: skip
        after = _now()

        steps = store.list_steps("run-a")
        assert [_without_times(s) for s in steps] == [
            _without_times(s) for s in [*first, *second, _step(1, 0, 0)]
        ]
        assert steps[1].finished_at == finished
        assert all(type(s.kind) is StepKind for s in steps)  # the enum, not its string
        for s in (steps[0], *steps[2:]):
            _assert_utc_between(s.finished_at, before, after)
        assert [_without_times(s) for s in store.list_steps("run-a", 1)] == [_step(1, 0, 0)]
        assert store.list_steps("run-a", 5) == []

        (epoch,) = store.list_epochs("run-a")
        assert _without_times(epoch) == _epoch(0, 0)
        _assert_utc_between(epoch.finished_at, before, after)

        mst0, mst1 = store.list_msts("run-a")
        assert (mst0.status, mst0.checkpoint, mst0.best_checkpoint) == (
            "running", "/c/0-2", "/c/0-2",
        )  # fmt: skip
        assert (mst1.status, mst1.checkpoint) == ("pending", "/c/1-1")

        events = store.list_events("run-a")
        assert [(e.kind, e.mst_id, e.detail) for e in events] == [
            (EventKind.HOPPED, 0, {"worker": 1, "steps": 2}),
            (EventKind.HOPPED, 0, {"worker": 0, "steps": 2}),
            (EventKind.EPOCH_END, 0, {"epoch": 0}),
        ]
        assert all(isinstance(e.kind, EventKind) for e in events)
        for e in events:
            _assert_utc_between(e.time, before, after)

    def test_list_epochs_is_ordered_by_mst_then_epoch(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0), _mst(1)])
        store.record_visit("run-a", 1, [], [_epoch(1, 1)], {})
        store.record_visit("run-a", 0, [], [_epoch(0, 1), _epoch(0, 0)], {})
        store.record_visit("run-a", 1, [], [_epoch(1, 0)], {})
        got = store.list_epochs("run-a")
        assert [(e.mst_id, e.epoch) for e in got] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        expected = [_epoch(0, 0), _epoch(0, 1), _epoch(1, 0), _epoch(1, 1)]
        assert [_without_times(e) for e in got] == expected
        assert [(e.mst_id, e.epoch) for e in store.list_epochs("run-a", 1)] == [(1, 0), (1, 1)]

    def test_recording_an_epoch_again_replaces_it(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0)])
        store.record_visit("run-a", 0, [], [_epoch(0, 0, metrics={"val_loss": 1.0})], {})
        again = _epoch(0, 0, metrics={"val_loss": 0.5}, eval_order=[1, 0], eval_seconds=0.75)
        store.record_visit("run-a", 0, [], [again], {"checkpoint": "/c/resumed"})
        (epoch,) = store.list_epochs("run-a")
        assert _without_times(epoch) == again
        assert store.list_msts("run-a")[0].checkpoint == "/c/resumed"

    def test_record_visit_that_repeats_a_step_keeps_nothing(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0)])
        store.record_visit(
            "run-a", 0, [_step(0, 0, 0)], [], {"checkpoint": "/c/first"},
            [(EventKind.HOPPED, {"n": 1})],
        )  # fmt: skip
        # The first step is new, the second one repeats a recorded sub-epoch: the write fails
        # inside the transaction, after the new step went in.
        with pytest.raises(StoreError):
            store.record_visit(
                "run-a", 0, [_step(0, 0, 1), _step(0, 0, 0, loss_sum=99.0)], [_epoch(0, 0)],
                {"checkpoint": "/c/second", "status": "completed"},
                [(EventKind.MST_COMPLETED, {})],
            )  # fmt: skip
        self._assert_only_first_visit(store)

    def test_record_visit_failing_at_its_last_part_keeps_nothing(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0)])
        store.record_visit(
            "run-a", 0, [_step(0, 0, 0)], [], {"checkpoint": "/c/first"},
            [(EventKind.HOPPED, {"n": 1})],
        )  # fmt: skip
        # Everything is valid but the last event's detail, which cannot be stored as JSON.
        with pytest.raises(StoreError, match=r"JSON"):
            store.record_visit(
                "run-a", 0, [_step(0, 0, 1)], [_epoch(0, 0)],
                {"checkpoint": "/c/second", "status": "completed"},
                [(EventKind.EPOCH_END, {"epoch": 0}), (EventKind.MST_COMPLETED, {"x": object()})],
            )  # fmt: skip
        self._assert_only_first_visit(store)

    def test_record_visit_of_unknown_mst_keeps_nothing(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0)])
        with pytest.raises(StoreError, match=r"mst_id=4"):
            store.record_visit(
                "run-a", 4, [_step(4, 0, 0)], [_epoch(4, 0)], {"checkpoint": "/c"},
                [(EventKind.HOPPED, {})],
            )  # fmt: skip
        with pytest.raises(StoreError, match=r"'nope'"):
            store.record_visit("nope", 0, [_step(0, 0, 0)], [], {})
        with pytest.raises(StoreError, match=r"mst_id"):  # a step of MST 4 in a visit of MST 0
            store.record_visit("run-a", 0, [_step(0, 0, 0), _step(4, 0, 1)], [], {})
        with pytest.raises(StoreError, match=r"colour"):
            store.record_visit("run-a", 0, [_step(0, 0, 0)], [], {"colour": "red"})
        assert store.list_steps("run-a") == []
        assert store.list_epochs("run-a") == []
        assert store.list_events("run-a") == []
        assert _without_times(store.list_msts("run-a")[0]) == _mst(0)

    def _assert_only_first_visit(self, store: BaseStore) -> None:
        assert [_without_times(s) for s in store.list_steps("run-a")] == [_step(0, 0, 0)]
        assert store.list_epochs("run-a") == []
        mst = store.list_msts("run-a")[0]
        assert (mst.checkpoint, mst.status) == ("/c/first", "pending")
        assert [(e.kind, e.detail) for e in store.list_events("run-a")] == [
            (EventKind.HOPPED, {"n": 1})
        ]
        assert store.row_counts("run-a") == {
            "msts": 1, "steps": 1, "epochs": 0, "events": 1, "commands": 0,
        }  # fmt: skip

    def test_non_finite_floats_round_trip(self, store: BaseStore) -> None:
        nan, inf = math.nan, math.inf
        store.create_experiment(_experiment(spec={"bad": nan, "big": [inf, -inf]}))
        store.add_msts("run-a", [_mst(0, params={"lr": inf, "x": [nan]})])
        sums = {"a": inf, "b": -inf, "c": nan}
        step = _step(0, 0, 0, loss_sum=nan, metric_sums=sums, seconds=inf)
        epoch = _epoch(0, 0, metrics={"val_loss": nan, "train_loss": -inf}, train_seconds=nan)
        store.record_visit("run-a", 0, [step], [epoch], {}, [(EventKind.EPOCH_END, {"v": nan})])

        spec = store.get_experiment("run-a").spec
        assert math.isnan(spec["bad"]) and spec["big"] == [inf, -inf]
        params = store.list_msts("run-a")[0].params
        assert params["lr"] == inf and math.isnan(params["x"][0])
        (got,) = store.list_steps("run-a")
        assert math.isnan(got.loss_sum) and got.seconds == inf
        assert got.metric_sums["a"] == inf and got.metric_sums["b"] == -inf
        assert math.isnan(got.metric_sums["c"])
        (got_epoch,) = store.list_epochs("run-a")
        assert math.isnan(got_epoch.metrics["val_loss"]) and got_epoch.metrics["train_loss"] == -inf
        assert math.isnan(got_epoch.train_seconds)
        assert math.isnan(store.list_events("run-a")[0].detail["v"])

    def test_values_that_are_not_json_raise_store_error(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        with pytest.raises(StoreError, match=r"JSON"):
            store.add_msts("run-a", [_mst(0), _mst(1, params={"fn": object()})])
        assert store.list_msts("run-a") == []
        with pytest.raises(StoreError, match=r"JSON"):
            store.create_experiment(_experiment("run-b", provenance={"set": {1, 2}}))
        assert [e.name for e in store.list_experiments()] == ["run-a"]

    # -- events ---------------------------------------------------------------------------
    def test_events_round_trip_oldest_first(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0)])
        before = _now()
        store.add_event("run-a", EventKind.STARTED, detail={"n_msts": 1})
        store.add_event(
            "run-a", EventKind.WORKER_RESTARTED, mst_id=0, worker=1, detail={"steps": 3}
        )
        store.add_event("run-a", EventKind.COMPLETED)
        after = _now()
        events = store.list_events("run-a")
        assert [(e.kind, e.mst_id, e.worker, e.detail) for e in events] == [
            (EventKind.STARTED, None, None, {"n_msts": 1}),
            (EventKind.WORKER_RESTARTED, 0, 1, {"steps": 3}),
            (EventKind.COMPLETED, None, None, {}),
        ]
        assert all(isinstance(e.kind, EventKind) for e in events)
        ids = [e.id for e in events]
        assert ids == sorted(ids) and len(set(ids)) == 3
        for e in events:
            _assert_utc_between(e.time, before, after)
        assert events[0].time <= events[1].time <= events[2].time

    def test_add_events_writes_them_in_order_or_none(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.add_msts("run-a", [_mst(0), _mst(1)])
        store.add_events("run-a", [])
        store.add_events("run-a", [
            (EventKind.MST_STOPPED, 1, {}), (EventKind.EPOCH_DECIDED, 0, {"epoch": 2}),
            (EventKind.COMMAND, None, {"i": 1}),
        ])  # fmt: skip
        events = store.list_events("run-a")
        assert [(e.kind, e.mst_id, e.detail) for e in events] == [
            (EventKind.MST_STOPPED, 1, {}), (EventKind.EPOCH_DECIDED, 0, {"epoch": 2}),
            (EventKind.COMMAND, None, {"i": 1}),
        ]  # fmt: skip
        assert [e.id for e in events] == sorted(e.id for e in events)
        with pytest.raises(StoreError, match=r"mst_id=3"):  # one unknown MST: none written
            store.add_events("run-a", [(EventKind.COMMAND, 0, {}), (EventKind.MST_FAILED, 3, {})])
        with pytest.raises(StoreError, match=r"'nope'"):
            store.add_events("nope", [(EventKind.STARTED, None, {})])
        assert store.list_events("run-a") == events

    def test_list_events_after_id(self, store: BaseStore) -> None:
        store.create_experiment(_experiment("run-a"))
        store.create_experiment(_experiment("run-b"))
        # Interleaved: ids may be shared across experiments, after_id must still hold.
        for i in range(3):
            store.add_event("run-a", EventKind.COMMAND, detail={"i": i})
            store.add_event("run-b", EventKind.COMMAND, detail={"i": 10 + i})
        events = store.list_events("run-a")
        assert [e.detail["i"] for e in events] == [0, 1, 2]
        assert store.list_events("run-a", after_id=0) == events
        assert store.list_events("run-a", after_id=events[0].id) == events[1:]
        assert store.list_events("run-a", after_id=events[1].id) == events[2:]
        assert store.list_events("run-a", after_id=events[2].id) == []
        assert [e.detail["i"] for e in store.list_events("run-b")] == [10, 11, 12]
        store.add_event("run-a", EventKind.COMPLETED)
        (new,) = store.list_events("run-a", after_id=events[2].id)
        assert new.kind is EventKind.COMPLETED and new.id > events[2].id

    def test_add_event_errors(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        with pytest.raises(StoreError, match=r"'nope'"):
            store.add_event("nope", EventKind.STARTED)
        with pytest.raises(StoreError, match=r"mst_id=3"):
            store.add_event("run-a", EventKind.MST_FAILED, mst_id=3)
        with pytest.raises(StoreError, match=r"'nope'"):
            store.list_events("nope")
        assert store.list_events("run-a") == []

    # -- commands -------------------------------------------------------------------------
    def test_command_lifecycle(self, store: BaseStore) -> None:
        store.create_experiment(_experiment("run-a"))
        store.create_experiment(_experiment("run-b"))
        before = _now()
        stop = store.add_command("run-a", "stop", {"mst_id": 1})
        other = store.add_command("run-b", "stop", {"mst_id": 0})
        clone = store.add_command("run-a", "clone", {"mst_id": 0, "changes": {"lr": 0.1}})
        after = _now()
        assert (stop.kind, stop.payload) == ("stop", {"mst_id": 1})
        assert stop.status is CommandStatus.PENDING
        assert (stop.applied_at, stop.message) == (None, None)
        _assert_utc_between(stop.created_at, before, after)
        assert len({stop.id, other.id, clone.id}) == 3

        assert store.pending_commands("run-a") == [stop, clone]
        assert store.pending_commands("run-b") == [other]
        store.set_command_status(stop.id, CommandStatus.APPLIED)
        assert store.pending_commands("run-a") == [clone]
        store.set_command_status(clone.id, CommandStatus.REJECTED, "MST 0 has failed")
        assert store.pending_commands("run-a") == []
        assert store.pending_commands("run-b") == [other]
        assert store.row_counts("run-a")["commands"] == 2  # applied commands are kept
        done = store.list_commands("run-a")
        assert [(c.id, c.status, c.message, c.new_mst_id) for c in done] == [
            (stop.id, CommandStatus.APPLIED, None, None),
            (clone.id, CommandStatus.REJECTED, "MST 0 has failed", None),
        ]
        assert all(c.applied_at is not None and c.applied_at >= c.created_at for c in done)

        with pytest.raises(StoreError, match=rf"command {stop.id}\b.*already applied"):
            store.set_command_status(stop.id, CommandStatus.REJECTED)
        with pytest.raises(StoreError, match=r"PENDING"):
            store.set_command_status(other.id, CommandStatus.PENDING)
        missing = max(stop.id, other.id, clone.id) + 1000
        with pytest.raises(StoreError, match=rf"\b{missing}\b"):
            store.set_command_status(missing, CommandStatus.APPLIED)
        assert store.pending_commands("run-b") == [other]
        added = store.add_command("run-b", "add", {"params": {"lr": 0.1}})
        store.set_command_status(added.id, CommandStatus.APPLIED, "added MST 7", new_mst_id=7)
        assert [(c.id, c.new_mst_id) for c in store.list_commands("run-b")] == [
            (other.id, None), (added.id, 7),
        ]  # fmt: skip

    def test_commands_of_unknown_experiment_raise(self, store: BaseStore) -> None:
        with pytest.raises(StoreError, match=r"'nope'"):
            store.add_command("nope", "stop", {})
        with pytest.raises(StoreError, match=r"'nope'"):
            store.pending_commands("nope")
        with pytest.raises(StoreError, match=r"'nope'"):
            store.list_commands("nope")

    # -- counts and closing ---------------------------------------------------------------
    def test_row_counts(self, store: BaseStore) -> None:
        store.create_experiment(_experiment("run-a"))
        store.create_experiment(_experiment("run-b"))
        zero = {"msts": 0, "steps": 0, "epochs": 0, "events": 0, "commands": 0}
        assert store.row_counts("run-a") == zero
        store.add_msts("run-a", [_mst(0), _mst(1)])
        store.add_msts("run-b", [_mst(0)])
        store.record_visit(
            "run-a", 0, [_step(0, 0, 0), _step(0, 0, 1), _step(0, 0, 0, kind="eval")],
            [_epoch(0, 0)], {}, [(EventKind.HOPPED, {}), (EventKind.EPOCH_END, {})],
        )  # fmt: skip
        store.add_event("run-a", EventKind.STARTED)
        store.add_command("run-a", "stop", {})
        store.add_event("run-b", EventKind.STARTED)
        assert store.row_counts("run-a") == {
            "msts": 2, "steps": 3, "epochs": 1, "events": 3, "commands": 1,
        }  # fmt: skip
        assert store.row_counts("run-b") == {**zero, "msts": 1, "events": 1}
        with pytest.raises(StoreError, match=r"'nope'"):
            store.row_counts("nope")

    def test_close_is_idempotent(self, store: BaseStore) -> None:
        store.create_experiment(_experiment())
        store.close()
        store.close()
