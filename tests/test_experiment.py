"""End-to-end runs on digits, failure isolation, and errors raised before any worker starts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import modelhopper as mh


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
    space = {"hidden": 32, "lr": mh.grid([0.05, 1e30]), "broken": mh.grid([False, True])}
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
    space = {"hidden": 32, "lr": 0.1, "broken": True}
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            mh.AllMSTsFailedError, match=r"all 1 MSTs failed .*factory exploded on purpose"
        ),
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
    assert other.msts[0].metrics == reference.msts[0].metrics


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
            r"'val_loss', 'val_accuracy'\] \(add the metric to Estimator.metrics",
        ),
        ({"search": {"direction": "up"}}, r"direction must be 'maximize' or 'minimize', got 'up'"),
        ({"search": {"epochs": 0}}, r"epochs must be an integer >= 1, got 0; e.g. epochs=5"),
    ],
)
def test_bad_arguments_are_rejected_clearly(digits, tmp_path, kwargs, message):
    with pytest.raises(mh.ConfigError, match=message):
        _fit(digits, tmp_path, **kwargs)


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
