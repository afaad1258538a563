"""Keras 3 MSTs: the conformance suite, MOP equal to Keras's own training in one process over
the same batches (torch backend here; the JAX backend in a process of its own).

Keras takes its backend from KERAS_BACKEND at its first import, once per process:
this module sets torch before importing it (``--dist loadfile`` keeps the file in
one process, and no other test module imports keras).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="Keras is an extra: pip install 'modelhopper[keras]'")

import modelhopper as mh  # noqa: E402
from modelhopper.data._sharding import shard_splits  # noqa: E402
from modelhopper.estimator import derive_seed, state_from_bytes  # noqa: E402
from modelhopper.testing import EstimatorConformance  # noqa: E402

N_WORKERS, EPOCHS, SEED = 2, 2, 3


def build_model(hidden: int) -> keras.Model:
    return keras.Sequential([
        keras.Input((64,)), keras.layers.Rescaling(1 / 16),
        keras.layers.Dense(hidden, activation="relu"), keras.layers.Dropout(0.2),
        keras.layers.Dense(10),
    ])  # fmt: skip


def make_estimator(p):
    return mh.KerasEstimator(
        build_model(p["hidden"]), optimizer=keras.optimizers.Adam(p["lr"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], batch_size=32,
    )  # fmt: skip


class TestKerasEstimator(EstimatorConformance):
    params = {"hidden": 16, "lr": 1e-2}

    def make_estimator(self, params):
        return make_estimator(params)

    def dataset(self):
        digits = mh.datasets.digits(seed=0)
        return digits.train.x[:300], digits.train.y[:300], digits.validation.x, digits.validation.y


@pytest.fixture(scope="module")
def digits():
    return mh.datasets.digits(seed=0)


@pytest.fixture(scope="module")
def mop(digits, tmp_path_factory):
    space = {"hidden": mh.grid([16, 32]), "lr": mh.grid([1e-2, 3e-3])}
    search = mh.GridSearch(make_estimator, space, epochs=EPOCHS, metric="val_accuracy",
                           direction="maximize", seed=SEED)  # fmt: skip
    return search.fit(digits, n_workers=N_WORKERS, run_dir=tmp_path_factory.mktemp("run"),
                      executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip


def _keras_fit(mst: mh.MST, digits: mh.Dataset, history: list[dict]) -> keras.Model:
    """The oracle: Keras's own training in this process (``train_on_batch``), one process,
    one stream of random draws, over MOP's batches in its order. (``model.fit`` draws its
    dropout masks differently from ``train_on_batch`` in Keras 3.15: without dropout the
    two give the same weights.)"""
    keras.utils.set_random_seed(mst.seed % 2**32)  # as build_estimator seeds a Keras MST
    torch.manual_seed(mst.seed)
    model = make_estimator(mst.params).model
    shards = shard_splits(digits, N_WORKERS, seed=SEED)
    for row in history:
        for shard in row["train_order"]:
            train, _ = shards[shard]
            generator = torch.Generator().manual_seed(derive_seed(mst.seed, row["epoch"], shard))
            order = torch.randperm(len(train), generator=generator).numpy()
            for start in range(0, len(order), 32):
                rows = order[start : start + 32]
                model.train_on_batch(train.x[rows], train.y[rows])
    return model


def test_keras_msts_under_mop_train_as_keras_in_one_process(mop, digits):
    assert [m.status for m in mop.msts] == [mh.MSTStatus.COMPLETED] * 4
    assert mop.stats.n_hops > 0
    for record in mop.msts:
        mst = mh.MST(record.id, record.params, record.seed)
        model = _keras_fit(mst, digits, record.history)
        state = state_from_bytes(record.checkpoint.read_bytes())
        mine = [*model.trainable_variables, *model.non_trainable_variables]
        for variable, tensor in zip(mine, state["variables"], strict=False):
            np.testing.assert_allclose(tensor.numpy(), keras.ops.convert_to_numpy(variable),
                                       rtol=1e-5, atol=1e-6)  # fmt: skip


def test_keras_msts_learn(mop):
    assert max(m.history[-1]["val_accuracy"] for m in mop.msts) > 0.5  # 10 classes


def test_a_keras_model_loads_back_from_its_checkpoint(mop, digits):
    best = mop.best
    model = best.load_model()
    logits = keras.ops.convert_to_numpy(model.predict(digits.validation.x, verbose=0))
    accuracy = float((logits.argmax(1) == digits.validation.y).mean())
    assert accuracy == pytest.approx(best.metrics["val_accuracy"], abs=1e-6)  # float32 sums


def test_bad_keras_estimators_say_what_to_fix():
    with pytest.raises(mh.EstimatorError, match="not compiled: pass optimizer= and loss="):
        mh.KerasEstimator(build_model(8))
    with pytest.raises(mh.EstimatorError, match="must be a keras.Model"):
        mh.KerasEstimator(object())


JAX_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import keras, numpy as np, torch
    import modelhopper as mh
    from modelhopper.data._sharding import shard_splits
    from modelhopper.estimator import derive_seed, state_from_bytes

    def make_estimator(p):
        model = keras.Sequential([keras.Input((64,)), keras.layers.Rescaling(1 / 16),
                                  keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(10)])
        return mh.KerasEstimator(model, optimizer=keras.optimizers.Adam(p["lr"]),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), batch_size=32)

    digits = mh.datasets.digits(seed=0)
    result = mh.GridSearch(make_estimator, {"lr": mh.grid([1e-2, 3e-3])}, epochs=2,
                           seed=3).fit(digits, n_workers=2, run_dir=sys.argv[1],
                                       executor=mh.LocalExecutor(replicas=1))  # states hop
    assert keras.backend.backend() == "jax" and result.stats.n_hops > 0
    shards = shard_splits(digits, 2, seed=3)
    for record in result.msts:
        keras.utils.set_random_seed(record.seed % 2**32)
        torch.manual_seed(record.seed)
        model = make_estimator(record.params).model
        for row in record.history:
            for shard in row["train_order"]:
                train, _ = shards[shard]
                g = torch.Generator().manual_seed(derive_seed(record.seed, row["epoch"], shard))
                order = torch.randperm(len(train), generator=g).numpy()
                for start in range(0, len(order), 32):
                    rows = order[start : start + 32]
                    model.train_on_batch(train.x[rows], train.y[rows])
        state = state_from_bytes(record.checkpoint.read_bytes())
        for variable, tensor in zip(model.trainable_variables, state["variables"]):
            np.testing.assert_allclose(tensor.numpy(), keras.ops.convert_to_numpy(variable),
                                       rtol=1e-5, atol=1e-6)
    print("jax ok", [round(r.metrics["val_accuracy"], 3) for r in result.msts])

    # A worker killed as it starts and one while it trains: the same run, to the bit
    # (the torch backend's test also kills replacements as they start).
    from modelhopper.testing import ChaosExecutor, KillPlan
    executor = ChaosExecutor(KillPlan(start_up=frozenset({1}), running={3: False}),
                             max_restarts=4, replicas=1)
    killed = mh.GridSearch(make_estimator, {"lr": mh.grid([1e-2, 3e-3])}, epochs=2,
                           seed=3).fit(digits, n_workers=2, run_dir=sys.argv[1] + "/killed",
                                       executor=executor)
    assert sum(executor.restarts) == len(executor.kills) == 2, executor.kills
    drop = ["train_seconds", "eval_seconds"]
    assert killed.history().drop(columns=drop).equals(result.history().drop(columns=drop))
    print("jax kills ok")
    """
)


@pytest.mark.slow
def test_the_jax_backend_trains_under_mop_as_keras_in_one_process_and_survives_kills(tmp_path):
    pytest.importorskip("jax", reason="the JAX backend: pip install 'modelhopper[keras]'")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jax ok" in done.stdout and "jax kills ok" in done.stdout


def test_a_keras_run_with_workers_killed_ends_as_an_undisturbed_one(mop, digits, tmp_path):
    from modelhopper.testing import ChaosExecutor, KillPlan

    space = {"hidden": mh.grid([16, 32]), "lr": mh.grid([1e-2, 3e-3])}
    search = mh.GridSearch(make_estimator, space, epochs=EPOCHS, metric="val_accuracy",
                           direction="maximize", seed=SEED)  # fmt: skip
    plan = KillPlan(start_up=frozenset({1}), running={3: True, 9: False})
    # One copy of the data: a visit is one sub-epoch, so the run has a fixed number of visits
    # for the plan to count (a worker holding every shard chains as many as fit in its time slice).
    executor = ChaosExecutor(plan, threads_per_worker=1, max_restarts=4, replicas=1)
    killed = search.fit(digits, n_workers=N_WORKERS, run_dir=tmp_path, executor=executor)
    assert sum(executor.restarts) == len(executor.kills) == 4
    drop = ["train_seconds", "eval_seconds"]
    assert killed.history().drop(columns=drop).equals(mop.history().drop(columns=drop))
