"""Replicas: workers that hold other shards as well run more of an MST's plan per visit.

Small data is held whole by every worker (``LocalExecutor(replicas="auto")``): an MST
then trains a whole epoch in one visit instead of hopping once per sub-epoch. Which
worker runs a step must change no result: every MST still trains on the shards in its
planned order, from the same state.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.data._sharding import ShardInfo, open_shard, write_shards
from modelhopper.executors._local import AUTO_REPLICATE_BYTES
from modelhopper.executors._worker import ShardWorker
from modelhopper.scheduling import MOPScheduler, StepKind, replicated_holdings, simulate
from modelhopper.testing import make_test_estimator
from modelhopper.testing._executor import N_SHARDS, _dataset, _evaluate, _task, _train


def _info(index: int, nbytes: int) -> ShardInfo:
    return ShardInfo(index=index, path=f"/nowhere/{index}", n_train=1, n_val=1, nbytes=nbytes)


@pytest.mark.parametrize(
    ("replicas", "nbytes", "expected"),
    [("auto", 1000, ((0, 1, 2),) * 3), ("auto", AUTO_REPLICATE_BYTES, ((0,), (1,), (2,))),
     (1, 10, ((0,), (1,), (2,))), (2, 10, ((0, 2), (0, 1), (1, 2))), (5, 10, ((0, 1, 2),) * 3)],
)  # fmt: skip
def test_local_executor_replicates_small_data_and_what_it_is_told(replicas, nbytes, expected):
    shards = [_info(i, nbytes) for i in range(3)]  # holdings read only the sizes
    assert mh.LocalExecutor(replicas=replicas).holdings(shards) == expected


@pytest.mark.parametrize("bad", [0, -1, "all", 1.5])
def test_bad_replicas_are_refused_with_the_fix(bad):
    with pytest.raises(mh.ConfigError, match=r"replicas must be an integer >= 1.*'auto'"):
        mh.LocalExecutor(replicas=bad)


def test_an_epoch_on_one_worker_with_replicas_equals_the_epoch_hopping_between_workers(tmp_path):
    shards = write_shards(_dataset(), N_SHARDS, tmp_path, seed=3)
    data = [open_shard(i.path) for i in shards]
    steps = (_train(0, 1, 0), _train(0, 0, 1), _evaluate(0, 0, 0), _evaluate(0, 1, 1))
    # Reference: each step on the worker that owns its shard, the state hopping between.
    owners = [ShardWorker(i, {i: data[i]}, N_SHARDS, make_test_estimator) for i in range(N_SHARDS)]
    first = owners[1].run(_task(1, steps[:1]))
    second = owners[0].run(_task(1, steps[1:3], state=first.state))
    third = owners[1].run(_task(1, steps[3:], state=second.state))
    hopped = [*first.outcomes, *second.outcomes, *third.outcomes]
    # One worker holding both shards runs the whole epoch in one visit.
    both = ShardWorker(0, {0: data[0], 1: data[1]}, N_SHARDS, make_test_estimator)
    assert both.nbytes == sum(i.nbytes for i in shards)
    # Materialised features of a replica stay in memory: the shard's folder is its owner's.
    assert both.features[0]._directory is not None and both.features[1]._directory is None
    visit = both.run(_task(1, steps))
    assert visit.error is None, visit.error
    for got, expected in zip(visit.outcomes, hopped, strict=True):
        assert got.step == expected.step
        assert (got.result.n, got.result.loss_sum) == (expected.result.n, expected.result.loss_sum)
        assert got.result.metric_sums == expected.result.metric_sums
    # The last hop only evaluated: it sends no state back, the driver keeps the second's.
    assert third.state is None and third.state_unchanged
    ours, theirs = (
        mh.estimator.state_from_bytes(visit.state),
        mh.estimator.state_from_bytes(second.state),
    )
    for name, tensor in theirs["model"].items():
        assert ours["model"][name].equal(tensor), name


def _history(result: mh.Result) -> list[tuple]:
    """Every MST's per-epoch metrics, without measured times and evaluation order."""
    return [
        (m.id, row["epoch"], {k: v for k, v in row.items() if k.endswith(("_loss", "_accuracy"))})
        for m in result.msts
        for row in m.history
    ]


@pytest.mark.slow
def test_a_run_on_replicated_data_gives_the_metrics_of_a_run_with_one_copy(tmp_path):
    """Real data (digits), the README's kind of run: the same metrics, fewer visits and hops."""
    space = {"hidden": mh.choice([16, 64]), "lr": mh.loguniform(1e-3, 1e-1), "batch_size": 32}

    def fit(replicas: int | str, name: str) -> mh.Result:
        search = mh.ASHA(make_digits_estimator, space, max_epochs=3, n_msts=6, seed=2)
        return search.fit(
            mh.datasets.digits(), n_workers=3, executor=mh.LocalExecutor(replicas=replicas),
            store=f"sqlite:///{tmp_path / name}.db", run_dir=tmp_path / name, progress=False,
        )  # fmt: skip

    one_copy, replicated = fit(1, "one"), fit("auto", "auto")
    assert len(_history(one_copy)) >= 6 and all(len(row[2]) == 4 for row in _history(one_copy))
    assert _history(replicated) == _history(one_copy)
    assert [m.status for m in replicated.msts] == [m.status for m in one_copy.msts]
    assert one_copy.stats.data_copies == pytest.approx(1.0, rel=0.01)
    assert replicated.stats.data_copies == pytest.approx(3.0, rel=0.01)
    assert replicated.stats.n_visits < one_copy.stats.n_visits / 2
    assert replicated.stats.n_hops < one_copy.stats.n_hops


def make_digits_estimator(p):
    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
    return mh.Estimator(
        model, torch.optim.SGD(model.parameters(), lr=p["lr"]), nn.CrossEntropyLoss(),
        metrics=["accuracy"], batch_size=p["batch_size"],
    )  # fmt: skip


def test_visits_of_a_worker_holding_every_shard_chain_epochs_within_chain_seconds():
    holdings = replicated_holdings(2, 2)
    chained = MOPScheduler(2, holdings=holdings, chain_seconds=0.35, seed=1)
    single = MOPScheduler(2, holdings=holdings, seed=1)
    for scheduler in (chained, single):
        for mst in range(3):
            scheduler.add_mst(mst, 6)
    cost = lambda mst, step: 0.05  # noqa: E731 - an epoch of 4 steps: 0.2 s
    chained_run, single_run = simulate(chained, cost), simulate(single, cost)
    epochs_per_visit = Counter(
        sum(s.is_last(StepKind.EVAL, 2) for s in visit.steps) for _, _, visit in chained_run.trace
    )
    # Estimates start at 1 s a step (nothing measured yet), then 0.2 s an epoch: the first
    # visits hold one epoch, later ones two (0.2 s < 0.35 s, 0.4 s is not).
    assert set(epochs_per_visit) == {1, 2} and epochs_per_visit[2] > epochs_per_visit[1]
    assert all(s.is_last(StepKind.EVAL, 2) for _, _, v in chained_run.trace for s in v.steps[-1:])
    assert _train_order(chained_run.trace) == _train_order(single_run.trace)
    partial = MOPScheduler(3, holdings=replicated_holdings(3, 2), chain_seconds=10.0)
    partial.add_mst(0, 3)
    trace = simulate(partial, cost).trace
    assert all(sum(s.is_last(StepKind.EVAL, 3) for s in v.steps) <= 1 for _, _, v in trace)


def _train_order(trace) -> dict[int, list]:
    steps: dict[int, list] = {}
    for _, _, visit in sorted(trace, key=lambda t: t[0]):
        steps.setdefault(visit.mst_id, []).extend(visit.steps)
    return steps


@pytest.mark.slow
def test_a_search_that_decides_nothing_runs_epochs_in_one_visit_and_keeps_its_best_epochs(
    tmp_path,
):
    """Grid and random search decide nothing from metrics: on replicated data a visit runs
    several epochs, and still each MST's best-epoch checkpoint is its best epoch's state."""
    # lr=2.0 makes a loss that wanders: best epochs that are not the last
    space = {"hidden": mh.grid([16, 64]), "lr": mh.grid([2.0, 0.1]), "batch_size": 16}

    def fit(replicas: int | str, name: str) -> mh.Result:
        search = mh.GridSearch(make_digits_estimator, space, epochs=6, seed=4)
        return search.fit(
            digits, n_workers=2, executor=mh.LocalExecutor(replicas=replicas),
            store=f"sqlite:///{tmp_path / name}.db", run_dir=tmp_path / name, progress=False,
        )  # fmt: skip

    digits = mh.datasets.digits()
    one_copy, chained = fit(1, "one"), fit("auto", "auto")
    assert _history(chained) == _history(one_copy)
    assert chained.stats.n_visits < 4 * 6  # fewer visits than epochs: some ran several
    x, y = torch.from_numpy(digits.validation.x), torch.from_numpy(digits.validation.y)
    bests = set()
    for mst in chained.msts:
        best = min(range(6), key=lambda e: (mst.history[e]["val_loss"], e))
        bests.add(best)
        for which, epoch in ((True, best), (False, 5)):
            model = mst.load_model(best=which)
            with torch.no_grad():
                loss = float(nn.CrossEntropyLoss()(model(x), y))
            assert loss == pytest.approx(mst.history[epoch]["val_loss"], rel=1e-5)
    assert bests != {5}  # some MST's best epoch was not its last
