"""Replicas: workers that hold other shards as well run more of an MST's plan per visit.

Small data is held whole by every worker (``LocalExecutor(replicas="auto")``): an MST
then trains a whole epoch in one visit instead of hopping once per sub-epoch. Which
worker runs a step must change no result: every MST still trains on the shards in its
planned order, from the same state.
"""

from __future__ import annotations

import pytest

import modelhopper as mh
from modelhopper.data._sharding import ShardInfo, open_shard, write_shards
from modelhopper.executors._local import AUTO_REPLICATE_BYTES
from modelhopper.executors._worker import ShardWorker
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
    owners = [ShardWorker(i, data[i], N_SHARDS, make_test_estimator) for i in range(N_SHARDS)]
    first = owners[1].run(_task(1, steps[:1]))
    second = owners[0].run(_task(1, steps[1:3], state=first.state))
    third = owners[1].run(_task(1, steps[3:], state=second.state))
    hopped = [*first.outcomes, *second.outcomes, *third.outcomes]
    # One worker holding both shards runs the whole epoch in one visit.
    both = ShardWorker(0, data[0], N_SHARDS, make_test_estimator, replicas={1: data[1]})
    assert both.nbytes == sum(i.nbytes for i in shards)
    visit = both.run(_task(1, steps))
    assert visit.error is None, visit.error
    for got, expected in zip(visit.outcomes, hopped, strict=True):
        assert got.step == expected.step
        assert (got.result.n, got.result.loss_sum) == (expected.result.n, expected.result.loss_sum)
        assert got.result.metric_sums == expected.result.metric_sums
    ours, theirs = (
        mh.estimator.state_from_bytes(visit.state),
        mh.estimator.state_from_bytes(third.state),
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
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
    return mh.Estimator(
        model, torch.optim.SGD(model.parameters(), lr=p["lr"]), nn.CrossEntropyLoss(),
        metrics=["accuracy"], batch_size=p["batch_size"],
    )  # fmt: skip
