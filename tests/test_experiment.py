"""End-to-end runs on digits, failure isolation, and errors raised before any worker starts."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.store import RunStatus, SQLStore


class _Greedy(nn.Module):
    """Asks the allocator for 2 PiB per batch: a real out-of-memory failure, not a mock."""

    def forward(self, x):
        return x + torch.zeros(x.shape[0], 2**48, dtype=torch.uint8)[:, : x.shape[1]]


def make_estimator(p):
    if p.get("broken"):
        raise RuntimeError("factory exploded on purpose")
    layers = [nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10)]
    model = nn.Sequential(_Greedy(), *layers) if p.get("oom") else nn.Sequential(*layers)
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=32,
    )


@pytest.fixture(scope="module")
def digits():
    return mh.datasets.digits(seed=0)


def test_random_search_learns_digits_and_reports_everything(digits, tmp_path):
    space = {"hidden": mh.choice([32, 64]), "lr": mh.loguniform(0.02, 0.2)}
    search = mh.RandomSearch(
        make_estimator, space, n_msts=3, epochs=3, metric="val_accuracy",
        direction="maximize", seed=0,
    )  # fmt: skip
    result = search.fit(digits, n_workers=2, run_dir=tmp_path)
    assert result.best.metrics["val_accuracy"] > 0.85  # real learning, not chance (0.1)
    frame = result.to_dataframe()
    assert list(frame["mst_id"]) == [result.best.id] + [
        i for i in frame["mst_id"] if i != result.best.id
    ]
    assert {"param_hidden", "param_lr", "status", "val_accuracy", "best_val_accuracy"} <= set(
        frame.columns
    )
    history = result.history()
    assert len(history) == 3 * 3
    assert {"train_loss", "val_loss", "train_order", "eval_order", "train_seconds"} <= set(
        history.columns
    )
    # Training lowers the loss of the best MST epoch over epoch.
    best = history[history["mst_id"] == result.best.id]["train_loss"].to_numpy()
    assert best[-1] < best[0]
    model = result.best.load_model()
    with torch.no_grad():
        predictions = model(torch.from_numpy(digits.test.x)).argmax(1).numpy()
    assert (predictions == digits.test.y).mean() > 0.85


def test_grid_search_expands_grid_and_choice(digits, tmp_path):
    space = {"hidden": mh.grid([16, 32]), "lr": mh.choice([0.05, 0.1]), "extra": 1}
    result = mh.GridSearch(make_estimator, space, epochs=1).fit(
        digits, n_workers=2, run_dir=tmp_path
    )
    assert sorted((m.params["hidden"], m.params["lr"]) for m in result.msts) == [
        (16, 0.05), (16, 0.1), (32, 0.05), (32, 0.1),
    ]  # fmt: skip
    assert all(m.params["extra"] == 1 for m in result.msts)


def test_failing_msts_fail_alone(digits, tmp_path):
    # The first MST fails (broken): the pre-flight check sees the second train, so the run
    # goes on and the failing MSTs fail alone on the workers.
    space = {"hidden": 32, "lr": mh.grid([0.05, 1e30]), "broken": mh.grid([True, False])}
    with pytest.warns(UserWarning, match="failed"):
        result = mh.GridSearch(make_estimator, space, epochs=2).fit(
            digits, n_workers=2, run_dir=tmp_path
        )
    by_params = {(m.params["lr"], m.params["broken"]): m for m in result.msts}
    ok = by_params[0.05, False]
    assert ok.status is mh.MSTStatus.COMPLETED and ok.epochs_done == 2
    assert "factory exploded on purpose" in by_params[0.05, True].error
    assert "RuntimeError" in by_params[0.05, True].traceback
    diverged = by_params[1e30, False]
    assert diverged.status is mh.MSTStatus.FAILED
    assert "loss became" in diverged.error and "lower the learning rate" in diverged.error
    assert result.best.id == ok.id


def test_an_mst_out_of_memory_fails_alone(digits, tmp_path):
    space = {"hidden": 32, "lr": 0.05, "oom": mh.grid([False, True])}
    with pytest.warns(UserWarning, match="failed"):
        result = mh.GridSearch(make_estimator, space, epochs=1).fit(
            digits, n_workers=2, run_dir=tmp_path
        )
    ok, greedy = sorted(result.msts, key=lambda m: m.params["oom"])
    assert ok.status is mh.MSTStatus.COMPLETED
    assert greedy.status is mh.MSTStatus.FAILED
    assert "allocate" in greedy.error  # torch's allocator refused: "can't allocate memory"


def test_all_msts_failing_raises_with_the_reasons(digits, tmp_path):
    space = {"hidden": 32, "lr": 1e30}  # trains one batch, then diverges on the workers
    with (
        pytest.warns(UserWarning),
        pytest.raises(mh.AllMSTsFailedError, match=r"all 1 MSTs failed .*loss became"),
    ):
        mh.GridSearch(make_estimator, space, epochs=1).fit(digits, n_workers=2, run_dir=tmp_path)


@pytest.mark.parametrize(
    "constructor",
    [
        lambda d: mh.Dataset.from_pandas(
            pd.DataFrame(d.train.x).assign(label=d.train.y),
            pd.DataFrame(d.validation.x).assign(label=d.validation.y),
            label="label",
        ),
        lambda d: mh.Dataset.from_torch(
            torch.utils.data.TensorDataset(
                torch.from_numpy(d.train.x), torch.from_numpy(d.train.y)
            ),
            torch.utils.data.TensorDataset(
                torch.from_numpy(d.validation.x), torch.from_numpy(d.validation.y)
            ),
        ),
    ],
    ids=["pandas", "torch"],
)
def test_datasets_from_other_formats_train_the_same(digits, tmp_path, constructor):
    data = constructor(digits)
    search = mh.GridSearch(make_estimator, {"hidden": 16, "lr": 0.1}, epochs=1)
    reference = search.fit(digits, n_workers=2, run_dir=tmp_path / "a")
    other = search.fit(data, n_workers=2, run_dir=tmp_path / "b")
    assert _untimed(other.msts[0].metrics) == _untimed(reference.msts[0].metrics)


def _untimed(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics that do not depend on timing (train_seconds is measured)."""
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


COMMON = """
import torch
from torch import nn
import modelhopper as mh

def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
    return mh.Estimator(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
                        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32)
"""


@pytest.mark.slow  # a fresh process starts workers: ~10 s
def test_resume_works_from_any_folder_without_pythonpath(digits, tmp_path, monkeypatch):
    """The factory lives in common.py, importable only where the run started."""
    code, elsewhere = tmp_path / "code", tmp_path / "elsewhere"
    code.mkdir(), elsewhere.mkdir()
    (code / "common.py").write_text(COMMON)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    common = importlib.import_module("common")
    url = f"sqlite:///{tmp_path}/db.sqlite"
    search = mh.GridSearch(common.make_estimator, {"hidden": 16, "lr": 0.1}, epochs=1, seed=3)
    done = search.fit(
        digits, n_workers=1, run_name="anywhere", store=url, run_dir=tmp_path / "run",
        keep_shards=True,
    )  # fmt: skip
    sys.modules.pop("common")
    # The driver died after its last result was committed, before it marked the run
    # completed: resume must rebuild the MSTs, in a fresh process, from another folder.
    with SQLStore(url) as store:
        store.set_experiment_status("anywhere", RunStatus.RUNNING)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    resumed = subprocess.run(
        [sys.executable, "-m", "modelhopper.cli", "resume", "anywhere", "--store", url],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "best MST 0" in resumed.stdout
    again = mh.load_result("anywhere", store=url)
    assert again.status == "completed"
    assert again.msts[0].metrics == done.msts[0].metrics  # read back: the recorded values


# -- errors before any worker starts ----------------------------------------
def _fit(data, tmp_path, **kwargs):
    executor = mh.LocalExecutor()
    search_kwargs = {"epochs": 1, **kwargs.pop("search", {})}
    space = kwargs.pop("space", {"hidden": 16, "lr": 0.1})
    try:
        mh.GridSearch(make_estimator, space, **search_kwargs).fit(
            data, run_dir=tmp_path, executor=executor, **kwargs
        )
    finally:
        assert executor.n_workers == 0  # the error came before any worker started


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_workers": 0}, r"n_workers must be an integer >= 1, got 0; e.g. n_workers=2"),
        ({"n_workers": 2.5}, r"n_workers must be an integer >= 1, got 2.5"),
        (
            {"search": {"metric": "val_acc"}},
            r"unknown metric 'val_acc'; this run reports \['train_loss', 'train_accuracy', "
            r"'val_loss', 'val_accuracy', 'train_seconds'\] \(add the metric to Estimator.metrics",
        ),
        ({"search": {"direction": "up"}}, r"direction must be 'maximize' or 'minimize', got 'up'"),
        ({"search": {"epochs": 0}}, r"epochs must be an integer >= 1, got 0; e.g. epochs=5"),
        (
            {"n_worker": 2},
            r"fit\(\) got unknown option\(s\) \['n_worker'\]; its options are \['checkpoints', "
            r"'executor', 'keep_shards', 'n_shards', 'n_workers', 'progress', 'run_dir', "
            r"'run_name', 'store'\]",
        ),
        ({"run_name": "a b"}, r"run_name"),
    ],
)
def test_bad_arguments_are_rejected_clearly(digits, tmp_path, kwargs, message):
    with pytest.raises(mh.ConfigError, match=message):
        _fit(digits, tmp_path, **kwargs)


def test_start_checks_its_options_before_anything_runs(digits, tmp_path):
    store = f"sqlite:///{tmp_path}/runs.db"
    search = mh.GridSearch(make_estimator, {"hidden": 16, "lr": 0.1}, epochs=1)
    with pytest.raises(mh.ConfigError, match=r"start\(\) got unknown option\(s\) \['workers'\]"):
        search.start(digits, workers=2, store=store)  # type: ignore[call-arg]
    with SQLStore(store) as db:
        assert db.list_experiments() == []  # nothing recorded


def test_more_workers_than_training_examples(tmp_path):
    rng = np.random.default_rng(0)
    tiny = mh.Dataset.from_numpy(
        rng.random((3, 64), dtype=np.float32), np.array([0, 1, 2]),
        rng.random((5, 64), dtype=np.float32), np.array([0, 1, 2, 3, 4]),
    )  # fmt: skip
    with pytest.raises(
        mh.ConfigError, match=r"n_workers=4 is more than the 3 training examples.*n_workers <= 3"
    ):
        _fit(tiny, tmp_path, n_workers=4)


def test_labels_outside_the_models_classes(digits, tmp_path):
    wide = mh.Dataset.from_numpy(
        digits.train.x, digits.train.y + 3, digits.validation.x, digits.validation.y
    )
    with pytest.raises(
        mh.DataError, match=r"label 1[0-2] in the 'train' split is outside \[0, 10\)"
    ):
        _fit(wide, tmp_path, n_workers=2)


def test_data_that_is_not_a_dataset(tmp_path):
    with pytest.raises(mh.ConfigError, match=r"data must be a modelhopper.Dataset, got tuple"):
        _fit((np.zeros((4, 64)), np.zeros(4)), tmp_path, n_workers=2)


@pytest.mark.parametrize(
    ("space", "error", "message"),
    [
        (lambda: {"hidden": mh.choice([])}, mh.SpaceError, r"at least one value"),
        (lambda: {"lr": mh.uniform(0.5, 0.1)}, mh.SpaceError, r"low <= high"),
        (lambda: {"lr": {"grid_search": [1, 2]}}, mh.SpaceError, r"unknown domain type dict"),
    ],
)
def test_bad_spaces_fail_before_the_run(space, error, message, digits, tmp_path):
    with pytest.raises(error, match=message):
        _fit(digits, tmp_path, space=space(), n_workers=2)


def _returns(value):
    return lambda p: value


def _float_labels(d):
    return mh.Dataset.from_numpy(
        d.train.x, d.train.y + 0.5, d.validation.x, d.validation.y.astype(np.float64)
    )


def _batch_size_0(p):
    model = nn.Linear(64, 10)
    return mh.Estimator(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                        batch_size=0)  # fmt: skip


def _narrow_input(p):
    model = nn.Linear(32, 10)  # the digits have 64 features
    return mh.Estimator(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())


def _same(d):
    return d


@pytest.mark.parametrize(
    ("data", "factory", "message"),
    [
        (
            _same, _returns(None),
            r"MST 0 \(params \{'hidden': \d+, 'lr': 0.1\}\) cannot train one batch of the "
            r"training data, so the run did not start \(MSTs 1 and 2 failed too\): "
            r"make_estimator returned None \(does it end with `return`\?\), not a "
            r"modelhopper.Estimator; return mh.Estimator\(model=..., optimizer=..., loss=...\) "
            r"for every MST's params",
        ),
        (
            _same, _returns({"model": 1}),
            r"MST 0 .*: make_estimator returned dict, not a modelhopper.Estimator; return",
        ),
        (
            _same, lambda p: make_estimator({**p, "broken": True}),
            r"MST 0 \(params .*\) cannot train .*: make_estimator raised RuntimeError: factory "
            r"exploded on purpose; fix make_estimator",
        ),
        (
            _same, _batch_size_0,
            r"MST 0 .*: the Estimator that make_estimator built is invalid: batch_size must be "
            r">= 1, got 0",
        ),
        (
            _float_labels, make_estimator,
            r"MST 0 .*: the loss cannot compare the model's output of shape \(2, 10\) float32 "
            r"with the labels of shape \(2,\) float32 \(first label \d\.5\): RuntimeError: "
            r"expected target dtype to be Long .*; a classification loss such as "
            r"CrossEntropyLoss needs integer class labels 0..9: make y int64",
        ),
        (
            _same, _narrow_input,
            r"MST 0 .*: the model cannot take a batch of x of shape \(2, 64\) float32: "
            r"RuntimeError: mat1 and mat2 shapes cannot be multiplied \(2x64 and 32x10\); "
            r"make the model's input layer match",
        ),
    ],
    ids=["none", "dict", "raises", "batch-size-0", "float-labels", "shape"],
)  # fmt: skip
def test_what_every_mst_shares_fails_before_any_worker_starts(
    digits, tmp_path, data, factory, message
):
    executor = mh.LocalExecutor()
    space = {"hidden": mh.choice([16, 32]), "lr": 0.1}
    search = mh.RandomSearch(factory, space, n_msts=4, epochs=1)
    started = time.perf_counter()
    with pytest.raises(mh.EstimatorError, match=message) as caught:
        search.fit(data(digits), n_workers=2, executor=executor, run_dir=tmp_path / "run")
    assert time.perf_counter() - started < 5  # workers would take seconds to fail
    assert executor.n_workers == 0
    assert "(MSTs 1 and 2 failed too)" in str(caught.value)  # three tried, each failed
    assert not (tmp_path / "run").exists()  # nothing recorded, nothing sharded


def test_the_preflight_check_changes_nothing(digits):
    """No RNG draw, no flush-denormal change, no change to modules the factory shares."""
    from modelhopper.estimator import denormals_flushed
    from modelhopper.experiment import _probe

    shared = nn.BatchNorm1d(64)  # a module every MST's model holds (e.g. a frozen trunk)

    def factory(p):
        torch.set_flush_denormal(False)  # a factory that changes torch's global state
        model = nn.Sequential(shared, nn.Dropout(0.5), nn.Linear(64, 10))
        return mh.Estimator(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
            train_transform=lambda x: x + torch.rand_like(x),
        )  # fmt: skip

    search = mh.GridSearch(factory, {"hidden": 1}, epochs=1)
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    rng = torch.get_rng_state()
    assert _probe(search, [search.make_mst(0, {"hidden": 1})], digits) == 10
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, shared.state_dict()[k]) for k, v in before.items())
    assert shared.weight.grad is None and shared.training
    with denormals_flushed():
        _probe(search, [search.make_mst(0, {"hidden": 1})], digits)
        assert torch.tensor(1e-40) * torch.tensor(1.0) == 0  # still flushed


def test_the_preflight_check_applies_train_transform(digits):
    """Raw uint8 examples train only after train_transform makes them floats."""
    from modelhopper.experiment import _probe

    raw = mh.Dataset.from_numpy(
        (digits.train.x * 15).astype(np.uint8), digits.train.y,
        (digits.validation.x * 15).astype(np.uint8), digits.validation.y,
    )  # fmt: skip

    def factory(p):
        model = nn.Linear(64, 10)
        return mh.Estimator(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
            train_transform=(lambda x: x.float() / 15) if p["transform"] else None,
        )  # fmt: skip

    search = mh.GridSearch(factory, {"transform": mh.grid([True, False])}, epochs=1)
    assert _probe(search, [search.make_mst(0, {"transform": True})], raw) == 10
    with pytest.raises(mh.EstimatorError, match=r"x of shape \(2, 64\) uint8: RuntimeError"):
        _probe(search, [search.make_mst(0, {"transform": False})], raw)


def test_an_empty_space_is_refused():
    with pytest.raises(mh.SpaceError, match=r"the space is empty: it names no parameter, so"):
        mh.GridSearch(make_estimator, {}, epochs=1)


BAD_NAMES = ["", "a/b", "..", "../up", "a\\b", "x" * 101, "two words", ".hidden", 7]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_run_names_are_refused_before_the_run(digits, tmp_path, name):
    message = r"run_name must be 1 to 100 letters, digits, '.', '_' or '-', starting with a "
    with pytest.raises(mh.ConfigError, match=message):
        _fit(digits, tmp_path, run_name=name, n_workers=2)
    with pytest.raises(mh.ConfigError, match=message):
        mh.GridSearch(make_estimator, {"hidden": 16, "lr": 0.1}, epochs=1).start(
            digits, run_name=name
        )


def test_a_long_plain_run_name_is_fine():
    from modelhopper.experiment import check_run_name

    assert check_run_name("Run_1.2-" + "x" * 92) == "Run_1.2-" + "x" * 92


def test_bad_estimator_fields():
    model = nn.Linear(2, 2)
    with pytest.raises(mh.EstimatorError, match=r"unknown metric 'f1' in Estimator.metrics"):
        mh.Estimator(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), ["f1"])
    with pytest.raises(mh.EstimatorError, match=r"batch_size must be >= 1, got 0"):
        mh.Estimator(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), [], 0)


def test_a_transform_that_is_not_callable_is_refused():
    with pytest.raises(mh.EstimatorError, match="Estimator.train_transform must be a callable"):
        mh.Estimator(
            model=nn.Linear(2, 2),
            optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            train_transform="flip",
        )


def test_per_example_applies_the_transform_to_each_example():
    calls = []

    def double(x):
        calls.append(x.shape)
        return x * 2

    batch = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(mh.per_example(double)(batch), batch * 2)
    assert calls == [torch.Size([2])] * 3


def test_training_in_this_process_leaves_its_floating_point_behaviour_alone():
    from modelhopper.estimator import denormals_flushed, train_pass

    def subnormal_survives() -> bool:
        return bool(torch.tensor(1e-40) * torch.tensor(1.0) != 0)

    estimator = mh.Estimator(
        model=nn.Linear(4, 3),
        optimizer=torch.optim.SGD(nn.Linear(4, 3).parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
    )
    x, y = np.ones((8, 4), dtype=np.float32), np.zeros(8, dtype=np.int64)
    train_pass(estimator, x, y, seed=0, epoch=0, shard=0)
    assert subnormal_survives()  # only worker processes flush denormals for good
    with denormals_flushed():
        assert not subnormal_survives()
    assert subnormal_survives()
