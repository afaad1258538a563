"""The conformance suite every ``BaseExecutor`` implementation passes.

Subclass it in a test module, give it an ``executor`` fixture that yields a
fresh, unstarted executor (and shuts it down), and say how to kill a worker's
process the way a crash would::

    class TestMyExecutor(ExecutorConformance):
        @pytest.fixture
        def executor(self):
            with MyExecutor() as executor:
                yield executor

        def kill_worker(self, executor, worker):
            os.kill(executor.pids[worker], signal.SIGKILL)

The oracle is a ``ShardWorker`` run in the test process on the same shards:
an executor moves visits and state between workers, so every visit it runs
must give the bytes the in-process worker gives, whatever process, node or
transport hosted it.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from modelhopper.data import Dataset
from modelhopper.data._sharding import ShardInfo, open_shard, write_shards
from modelhopper.errors import ExecutorError
from modelhopper.estimator import Estimator, PassResult, state_from_bytes
from modelhopper.executors import (
    BaseExecutor,
    StateSource,
    VisitResult,
    VisitTask,
    state_bytes,
    state_nbytes,
)
from modelhopper.executors._worker import ShardWorker
from modelhopper.scheduling import Step, StepKind

__all__ = ["ExecutorConformance", "make_test_estimator"]

N_SHARDS = 2
N_FEATURES = 8
N_CLASSES = 3


def make_test_estimator(params: dict[str, Any]) -> Estimator:
    """A small MLP with dropout (so the RNG state must travel with the weights)."""
    if params.get("fail"):
        raise RuntimeError("this MST is meant to fail")
    hidden = params.get("hidden", 16)
    model = nn.Sequential(
        nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, N_CLASSES)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=params.get("lr", 1e-2))
    return Estimator(
        model=model,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=16,
    )


def _dataset() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return Dataset.from_numpy(x[:180], y[:180], x[180:], y[180:])


def _train(epoch: int, shard: int, position: int) -> Step:
    return Step(StepKind.TRAIN, epoch, shard, position)


def _evaluate(epoch: int, shard: int, position: int) -> Step:
    return Step(StepKind.EVAL, epoch, shard, position)


def _task(mst_id: int, steps: tuple[Step, ...], state: Any = None, **params: Any) -> VisitTask:
    """A fresh MST's visit, or one that is sent ``state``, or (``held=True``) one whose
    worker holds the MST's state."""
    if state is not None:
        source = StateSource.SENT
    else:
        source = StateSource.HELD if params.pop("held", False) else StateSource.FRESH
    return VisitTask(mst_id, {"hidden": 16, **params}, 1000 + mst_id, steps, source, state)


def _held_bytes(executor: BaseExecutor, shards: list[ShardInfo]) -> list[int]:
    """Bytes each worker holds if it holds exactly the shards its holdings name."""
    return [sum(shards[s].nbytes for s in held) for held in executor.holdings(shards)]


def _sums(result: PassResult) -> tuple[int, float, dict[str, float]]:
    """What a pass computed, without its timing."""
    return result.n, result.loss_sum, result.metric_sums


def _weights(state: Any) -> dict[str, torch.Tensor]:
    return state_from_bytes(state_bytes(state))["model"]


def _assert_same_weights(got: Any, expected: Any) -> None:
    got_w, expected_w = _weights(got), _weights(expected)
    assert got_w.keys() == expected_w.keys()
    for name in got_w:
        assert torch.equal(got_w[name], expected_w[name]), f"parameter {name} differs"


class ExecutorConformance(abc.ABC):
    """Contracts of ``BaseExecutor`` that the driver relies on.

    One started executor serves the whole class (starting workers costs
    seconds); each test uses its own MST ids, so worker caches never mix them.
    """

    @abc.abstractmethod
    def new_executor(self) -> BaseExecutor:
        """A fresh, unstarted executor."""

    @abc.abstractmethod
    def worker_pid(self, executor: BaseExecutor, worker: int) -> int:
        """The process id of worker ``worker``."""

    @abc.abstractmethod
    def kill_worker(self, executor: BaseExecutor, worker: int) -> None:
        """Kill worker ``worker``'s process abruptly (as an OOM kill or a crash would)."""

    @pytest.fixture(scope="class")
    @classmethod
    def shards(cls, tmp_path_factory: pytest.TempPathFactory) -> list[ShardInfo]:
        return write_shards(_dataset(), N_SHARDS, tmp_path_factory.mktemp("shards"), seed=3)

    @pytest.fixture(scope="class")
    @classmethod
    def started(cls, shards: list[ShardInfo]) -> Iterator[BaseExecutor]:
        with cls().new_executor() as executor:
            executor.start(shards, make_test_estimator)
            yield executor

    @pytest.fixture(scope="class")
    @classmethod
    def oracle(cls, shards: list[ShardInfo]) -> list[ShardWorker]:
        """In-process workers on the same shards: what every visit must give."""
        return [
            ShardWorker(i.index, {i.index: open_shard(i.path)}, N_SHARDS, make_test_estimator)
            for i in shards
        ]

    # -- helpers -------------------------------------------------------------------
    @staticmethod
    def run_one(executor: BaseExecutor, worker: int, task: VisitTask) -> VisitResult:
        executor.submit(worker, task)
        (result,) = executor.wait()
        return result

    # -- the contracts ---------------------------------------------------------------
    def test_workers_hold_the_shards_their_holdings_name(
        self, started: BaseExecutor, shards: list[ShardInfo]
    ) -> None:
        holdings = started.holdings(shards)
        assert len(holdings) == len(shards)
        assert all(w in held for w, held in enumerate(holdings))  # its own, and maybe replicas
        assert started.resident_shard_bytes == _held_bytes(started, shards)

    def test_a_fresh_visit_trains_and_evaluates_like_the_oracle(
        self, started: BaseExecutor, oracle: list[ShardWorker]
    ) -> None:
        task = _task(1, (_train(0, 0, 0), _evaluate(0, 0, 0)))
        result = self.run_one(started, 0, task)
        expected = oracle[0].run(task)
        assert result.error is None, result.error
        assert (result.worker, result.mst_id) == (0, 1)
        assert [o.step for o in result.outcomes] == list(task.steps)
        assert [_sums(o.result) for o in result.outcomes] == [
            _sums(o.result) for o in expected.outcomes
        ]
        assert result.state is not None and expected.state is not None
        assert state_nbytes(result.state) == state_nbytes(expected.state)
        _assert_same_weights(result.state, expected.state)

    def test_state_hops_between_workers_bit_for_bit(
        self, started: BaseExecutor, oracle: list[ShardWorker]
    ) -> None:
        first = _task(8, (_train(0, 0, 0),))
        got = self.run_one(started, 0, first)
        expected = oracle[0].run(first)
        second = _task(8, (_train(0, 1, 1), _evaluate(0, 1, 0)), state=got.state)
        got = self.run_one(started, 1, second)
        expected = oracle[1].run(_task(8, second.steps, state=expected.state))
        assert got.error is None, got.error
        assert [_sums(o.result) for o in got.outcomes] == [
            _sums(o.result) for o in expected.outcomes
        ]
        _assert_same_weights(got.state, expected.state)

    def test_a_worker_continues_an_mst_it_holds_without_state(
        self, started: BaseExecutor, oracle: list[ShardWorker]
    ) -> None:
        first = _task(2, (_train(0, 0, 0),))
        self.run_one(started, 0, first)
        again = _task(2, (_evaluate(0, 0, 0),), held=True)
        got = self.run_one(started, 0, again)
        oracle[0].run(first)
        expected = oracle[0].run(again)
        assert got.error is None, got.error
        assert _sums(got.outcomes[0].result) == _sums(expected.outcomes[0].result)

    def test_an_evaluation_only_visit_sends_no_state_back(
        self, started: BaseExecutor, oracle: list[ShardWorker]
    ) -> None:
        """Evaluation changes no state: the driver keeps the state it sent, and the worker
        goes on from its copy when it trains the MST next."""
        first = _task(13, (_train(0, 0, 0),))
        trained = self.run_one(started, 0, first)
        evaluate = _task(13, (_evaluate(0, 1, 1),), state=trained.state)
        got = self.run_one(started, 1, evaluate)
        assert got.error is None, got.error
        assert got.state is None and got.state_unchanged
        after = _task(13, (_train(1, 1, 0),), held=True)
        went_on = self.run_one(started, 1, after)
        expected_first = oracle[0].run(first)
        expected = oracle[1].run(_task(13, evaluate.steps, state=expected_first.state))
        assert _sums(got.outcomes[0].result) == _sums(expected.outcomes[0].result)
        assert not went_on.state_unchanged and went_on.state is not None
        _assert_same_weights(went_on.state, oracle[1].run(after).state)

    def test_visits_run_on_all_workers_at_once(self, started: BaseExecutor) -> None:
        for worker in range(N_SHARDS):
            started.submit(worker, _task(10 + worker, (_train(0, worker, 0),)))
        results: list[VisitResult] = []
        while len(results) < N_SHARDS:
            results.extend(started.wait())
        assert sorted((r.worker, r.mst_id) for r in results) == [(0, 10), (1, 11)]
        assert all(r.error is None and r.busy_seconds > 0 for r in results)

    def test_poll_returns_each_finished_visit_once_without_waiting(
        self, started: BaseExecutor, oracle: list[ShardWorker]
    ) -> None:
        """``poll`` may return nothing (an executor that cannot tell cheaply); whatever it
        returns is a finished visit, and ``wait`` returns the rest: none twice, none lost."""
        assert started.poll() == []  # nothing in flight
        tasks = [_task(20 + w, (_train(0, w, 0),)) for w in range(N_SHARDS)]
        for worker, task in enumerate(tasks):
            started.submit(worker, task)
        results: list[VisitResult] = []
        for _ in range(50):  # a few polls while the visits run, then wait for the rest
            results.extend(started.poll())
            time.sleep(0.01)
        while len(results) < N_SHARDS:
            results.extend(started.wait())
        assert sorted((r.worker, r.mst_id) for r in results) == [(0, 20), (1, 21)]
        for result in results:
            expected = oracle[result.worker].run(tasks[result.worker])
            _assert_same_weights(result.state, expected.state)
        assert started.poll() == []

    def test_a_failing_mst_fails_alone_and_the_worker_goes_on(self, started: BaseExecutor) -> None:
        failed = self.run_one(started, 0, _task(3, (_train(0, 0, 0),), fail=True))
        assert failed.error is not None and "meant to fail" in failed.error
        assert failed.traceback and failed.state is None
        ok = self.run_one(started, 0, _task(4, (_train(0, 0, 0),)))
        assert ok.error is None and ok.state is not None and state_nbytes(ok.state) > 0

    def test_misuse_is_refused_clearly(
        self, started: BaseExecutor, shards: list[ShardInfo]
    ) -> None:
        with pytest.raises(ExecutorError, match="no visit in flight"):
            started.wait()
        started.submit(0, _task(5, (_train(0, 0, 0),)))
        with pytest.raises(ExecutorError, match="worker 0 is busy with MST 5"):
            started.submit(0, _task(6, (_train(0, 0, 0),)))
        started.wait()
        with pytest.raises(ExecutorError, match="already started"):
            started.start(shards, make_test_estimator)

    def test_a_killed_worker_is_replaced_and_results_do_not_change(
        self, started: BaseExecutor, oracle: list[ShardWorker], shards: list[ShardInfo]
    ) -> None:
        first = _task(7, (_train(0, 0, 0),))
        state = self.run_one(started, 0, first).state
        before = oracle[0].run(first)
        expected = oracle[1].run(_task(7, (_train(0, 1, 1),), state=before.state))
        pid = self.worker_pid(started, 1)
        second = _task(7, (_train(0, 1, 1),), state=state)
        started.submit(1, second)
        self.kill_worker(started, 1)
        result = started.wait()[0]
        if result.crashed:  # killed mid-visit: the driver re-runs it from the last state
            assert (result.mst_id, result.worker) == (7, 1)
            result = self.run_one(started, 1, second)
        else:  # it finished before the kill landed; the next visit finds it dead
            self.run_one(started, 1, _task(12, (_train(0, 1, 0),)))
        assert result.error is None, result.error
        _assert_same_weights(result.state, expected.state)
        assert self.worker_pid(started, 1) != pid, "the dead worker was not replaced"
        assert started.resident_shard_bytes == _held_bytes(started, shards)

    def test_shutdown_is_idempotent(self, shards: list[ShardInfo]) -> None:
        executor = self.new_executor()
        executor.start(shards, make_test_estimator)
        executor.shutdown()
        executor.shutdown()
