"""Representation fingerprints, the FeatureStore's budget rule, and the worker using both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.data._sharding import ShardData, open_shard, write_shards
from modelhopper.estimator import state_from_bytes
from modelhopper.executors import StateSource, VisitTask
from modelhopper.executors._worker import ShardWorker
from modelhopper.representations import FeatureStore, MaterialiseBudget, Tier
from modelhopper.scheduling import Step, StepKind


def scaled(x: torch.Tensor, *, scale: float) -> torch.Tensor:
    return x * scale


def squares(x: torch.Tensor, *, power: int = 2) -> torch.Tensor:
    return torch.cat([x, x**power], dim=1)


def _shard(n_train: int = 40, n_val: int = 10, width: int = 8, seed: int = 0) -> ShardData:
    rng = np.random.default_rng(seed)
    return ShardData(
        rng.random((n_train, width), dtype=np.float32),
        rng.integers(0, 3, n_train),
        rng.random((n_val, width), dtype=np.float32),
        rng.integers(0, 3, n_val),
    )


# ------------------------------------------------------------------ Representation


def test_fingerprint_depends_on_name_params_version_and_digest():
    base = mh.Representation("scaled", scaled, params={"scale": 2.0})
    assert base == mh.Representation("scaled", scaled, params={"scale": 2.0})
    others = [
        mh.Representation("scaled", scaled, params={"scale": 3.0}),
        mh.Representation("scaled2", scaled, params={"scale": 2.0}),
        mh.Representation("scaled", scaled, params={"scale": 2.0}, version="2"),
        mh.Representation("scaled", scaled, params={"scale": 2.0}, digest="weights-b"),
    ]
    assert len({base.fingerprint, *(r.fingerprint for r in others)}) == 5


def test_digest_function_is_called_once():
    calls = []
    rep = mh.Representation(
        "r", scaled, params={"scale": 1.0}, digest=lambda: calls.append(1) or "d"
    )
    assert rep.fingerprint == rep.fingerprint and rep.digest == "d"
    assert calls == [1]


def test_apply_in_chunks_equals_one_call():
    rep = mh.Representation("squares", squares, batch_size=7)
    x = np.random.default_rng(0).random((30, 4), dtype=np.float32)
    assert np.array_equal(rep.apply(x), squares(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "name must be a non-empty string"),
        ({"fn": 3}, "fn must be callable"),
        ({"params": {"w": object()}}, "params must hold plain values"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"digest": 5}, "digest must be a string or a function"),
    ],
)
def test_representation_rejects_bad_arguments(kwargs, match):
    args = {"name": "r", "fn": scaled, **kwargs}
    with pytest.raises(mh.ConfigError, match=match):
        mh.Representation(args.pop("name"), args.pop("fn"), **args)


def test_representation_must_keep_one_row_per_example():
    rep = mh.Representation("bad", lambda x: x.sum(0))
    with pytest.raises(mh.MSTFailedError, match="one row per example"):
        rep(torch.zeros(4, 2))


def test_budget_rejects_negative_bytes():
    with pytest.raises(mh.ConfigError, match=r"memory_bytes must be an int >= 0.*got -1"):
        MaterialiseBudget(memory_bytes=-1)


def test_local_executor_rejects_a_budget_that_is_not_one():
    with pytest.raises(mh.ConfigError, match=r"materialise must be a modelhopper.Materialise"):
        mh.LocalExecutor(materialise=512)


def test_estimator_rejects_a_representation_that_is_not_one():
    model = nn.Linear(2, 2)
    with pytest.raises(mh.EstimatorError, match="representation must be a modelhopper"):
        mh.Estimator(model, torch.optim.SGD(model.parameters(), 0.1), nn.MSELoss(), [], 4, None, 3)


# ------------------------------------------------------------------ FeatureStore


def test_same_representation_is_built_once_and_shared():
    store = FeatureStore(_shard())
    first = store.get(mh.Representation("sq", squares))
    again = store.get(mh.Representation("sq", squares))  # an equal one, built by another MST
    assert first.built and not again.built
    assert first.features is again.features and again.features.hits == 1
    assert first.tier is Tier.MEMORY
    assert np.array_equal(first.features.train_x, squares(torch.from_numpy(_shard().train_x)))
    assert store.built_bytes == first.nbytes == (40 + 10) * 16 * 4


def test_changed_params_or_shard_rebuild():
    store = FeatureStore(_shard())
    store.get(mh.Representation("sq", squares, params={"power": 2}))
    assert store.get(mh.Representation("sq", squares, params={"power": 3})).built
    other = FeatureStore(_shard(seed=1))
    assert other.key(mh.Representation("sq", squares)) != store.key(
        mh.Representation("sq", squares)
    )


def test_over_memory_budget_goes_to_disk_and_is_found_again(tmp_path):
    budget = MaterialiseBudget(memory_bytes=1000, disk_bytes=10_000)
    store = FeatureStore(_shard(), budget, tmp_path)
    lookup = store.get(mh.Representation("sq", squares))
    assert lookup.tier is Tier.DISK and isinstance(lookup.features.train_x, np.memmap)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    # A replaced worker on the same shard finds the files instead of rebuilding.
    again = FeatureStore(_shard(), budget, tmp_path).get(mh.Representation("sq", squares))
    assert not again.built and again.tier is Tier.DISK
    assert np.array_equal(again.features.val_x, lookup.features.val_x)
    assert again.features.build_seconds == lookup.features.build_seconds > 0


def test_over_every_budget_streams():
    store = FeatureStore(_shard(), MaterialiseBudget(memory_bytes=100, disk_bytes=0))
    lookup = store.get(mh.Representation("sq", squares))
    assert lookup.tier is Tier.STREAM and lookup.features is None and store.built_bytes == 0


def test_a_more_valuable_newcomer_evicts_a_cheaper_entry():
    store = FeatureStore(_shard(), MaterialiseBudget(memory_bytes=3000, disk_bytes=0))
    cheap = store.get(mh.Representation("sq", squares))  # 3200 bytes: too big, streams
    assert cheap.tier is Tier.STREAM
    small = store.get(mh.Representation("id", scaled, params={"scale": 1.0}))  # 1600 bytes
    assert small.tier is Tier.MEMORY
    entry = store.entries[small.features.key]
    entry.build_seconds = 0.0  # worth nothing: any newcomer that needs the room evicts it
    slow = mh.Representation("slow", torch.cos)
    placed = store.get(slow)
    assert placed.tier is Tier.MEMORY and placed.evicted == [small.features.key]


# ------------------------------------------------------------------ ShardWorker


def make_estimator(p):
    torch.manual_seed(0)
    width = 16 if p["repr"] == "squares" else 8
    model = nn.Sequential(nn.Linear(width, 3))
    rep = mh.Representation("squares", squares) if p["repr"] == "squares" else None
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        batch_size=8,
        representation=rep,
    )


def _visit(mst_id: int, repr_name: str) -> VisitTask:
    steps = (Step(StepKind.TRAIN, 0, 0, 0), Step(StepKind.EVAL, 0, 0, 0))
    return VisitTask(mst_id, {"repr": repr_name}, 5, steps, StateSource.FRESH)


def test_worker_materialises_once_for_msts_sharing_a_representation(tmp_path):
    worker = ShardWorker(0, {0: _shard()}, 1, make_estimator)
    first = worker.run(_visit(1, "squares"))
    second = worker.run(_visit(2, "squares"))
    plain = worker.run(_visit(3, "raw"))
    assert first.error is None and second.error is None and plain.error is None
    assert first.extra["features"]["built"] and not second.extra["features"]["built"]
    assert first.extra["features"]["tier"] == "memory" and "features" not in plain.extra
    weights = [state_from_bytes(r.state)["model"]["0.weight"] for r in (first, second)]
    assert torch.equal(*weights)  # same MST params and seed: same training


def test_streamed_training_equals_materialised_training():
    materialised = ShardWorker(0, {0: _shard()}, 1, make_estimator)
    streamed = ShardWorker(0, {0: _shard()}, 1, make_estimator, materialise=MaterialiseBudget(0, 0))
    a, b = materialised.run(_visit(1, "squares")), streamed.run(_visit(1, "squares"))
    assert a.extra["features"]["tier"] == "memory" and b.extra["features"]["tier"] == "stream"
    for name, tensor in state_from_bytes(a.state)["model"].items():
        assert torch.equal(state_from_bytes(b.state)["model"][name], tensor)
    assert a.outcomes[1].result.loss_sum == b.outcomes[1].result.loss_sum


def test_worker_keeps_disk_features_in_the_shard_folder(tmp_path):
    dataset = mh.datasets.digits(seed=0)
    (info,) = write_shards(dataset, 1, tmp_path, seed=0)
    budget = MaterialiseBudget(memory_bytes=0)
    worker = ShardWorker(0, {0: open_shard(info.path)}, 1, _digits_estimator, materialise=budget)
    result = worker.run(_visit(1, "squares"))
    assert result.error is None, result.error
    assert result.extra["features"]["tier"] == "disk"
    assert len(list((tmp_path / "shard-0" / "features").glob("*.npy"))) == 2


def _digits_estimator(p):
    model = nn.Linear(128, 10)
    return mh.Estimator(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
        representation=mh.Representation("squares", squares),
    )  # fmt: skip


def test_label_range_is_checked_through_the_representation(tmp_path):
    def five_classes(p):
        model = nn.Linear(128, 5)  # digits has 10 classes
        return mh.Estimator(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
            representation=mh.Representation("squares", squares),
        )  # fmt: skip

    search = mh.GridSearch(five_classes, {"x": 1}, epochs=1, metric="val_accuracy")
    with pytest.raises(mh.DataError, match="outside \\[0, 5\\)"):
        search.fit(mh.datasets.digits(seed=0), n_workers=2, run_dir=tmp_path)
