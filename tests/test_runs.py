"""Runs recorded in the store: results read back, checkpoints and their retention, provenance."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.store import SQLStore


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return mh.Estimator(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    url = f"sqlite:///{folder}/db.sqlite"
    search = mh.GridSearch(
        make_estimator, {"lr": mh.grid([0.05, 2.0])}, epochs=3, metric="val_loss"
    )
    result = search.fit(
        mh.datasets.digits(), n_workers=2, run_name="r1", store=url, run_dir=folder / "r1"
    )
    return result, url


def test_result_read_back_from_the_store_equals_the_returned_one(run):
    result, url = run
    again = mh.load_result("r1", store=url)
    pd.testing.assert_frame_equal(again.to_dataframe(), result.to_dataframe())
    pd.testing.assert_frame_equal(again.history(), result.history())
    assert again.stats == result.stats
    assert again.status == "completed"


def test_provenance_is_recorded(run):
    result, url = run
    provenance = SQLStore(url).get_experiment("r1").provenance
    assert provenance["versions"]["torch"] == torch.__version__
    assert provenance["versions"]["modelhopper"] == mh.__version__
    assert len(provenance["data_sha256"]) == 64
    assert provenance["n_workers"] == 2 and provenance["seed"] == 0
    assert provenance["host"]
    assert result.provenance == provenance


def test_checkpoints_keep_latest_and_best_only(run):
    result, _ = run
    for mst in result.msts:
        files = sorted((result.run_dir / "checkpoints" / f"mst-{mst.id:05d}").glob("*.state"))
        assert mst.checkpoint in files and mst.best_checkpoint in files
        assert len(files) == len({mst.checkpoint, mst.best_checkpoint})
        assert not list(mst.checkpoint.parent.glob("*.tmp"))


def test_best_checkpoint_is_the_state_evaluated_at_the_best_epoch(run):
    result, _ = run
    digits = mh.datasets.digits()
    for mst in result.msts:
        best_row = min(mst.history, key=lambda row: row["val_loss"])
        model = mh.load_model("r1", mst.id, store=run[1], best=True)
        with torch.no_grad():
            loss = nn.CrossEntropyLoss()(
                model(torch.from_numpy(digits.validation.x)), torch.from_numpy(digits.validation.y)
            )
        assert float(loss) == pytest.approx(best_row["val_loss"], rel=1e-5)


def test_best_checkpoint_is_exact_with_one_copy_of_the_data(tmp_path):
    """One shard per worker: an epoch's last evaluation runs in the visit that starts the
    next epoch's training (grid search decides nothing); the epoch's state is the one
    checkpointed by the visit that ended its training."""
    url = f"sqlite:///{tmp_path}/db.sqlite"
    search = mh.GridSearch(make_estimator, {"lr": mh.grid([0.05, 2.0])}, epochs=3,
                           metric="val_loss", direction="minimize")  # fmt: skip
    digits = mh.datasets.digits()
    result = search.fit(digits, executor=mh.LocalExecutor(replicas=1), run_name="one",
                        store=url, run_dir=tmp_path / "one")  # fmt: skip
    assert result.stats.n_visits == 2 * (3 * 2 + 1)  # per epoch 2 visits, then a last eval
    for mst in result.msts:
        best_row = min(mst.history, key=lambda row: row["val_loss"])
        model = mh.load_model("one", mst.id, store=url, best=True)
        with torch.no_grad():
            loss = nn.CrossEntropyLoss()(
                model(torch.from_numpy(digits.validation.x)), torch.from_numpy(digits.validation.y)
            )
        assert float(loss) == pytest.approx(best_row["val_loss"], rel=1e-5)


def test_load_model_of_an_unknown_mst(run):
    with pytest.raises(mh.ConfigError, match=r"run 'r1' has no MST 7; its MSTs are \[0, 1\]"):
        mh.load_model("r1", 7, store=run[1])


def test_every_sub_epoch_and_event_is_recorded(run):
    _, url = run
    store = SQLStore(url)
    counts = store.row_counts("r1")
    assert counts["msts"] == 2
    assert counts["steps"] == 2 * 3 * 2 * 2  # MSTs x epochs x (train + eval) x shards
    assert counts["epochs"] == 2 * 3
    kinds = [e.kind for e in store.list_events("r1")]
    assert kinds[0] is mh.store.EventKind.STARTED and kinds[-1] is mh.store.EventKind.COMPLETED
    assert kinds.count(mh.store.EventKind.EPOCH_END) == 6


def test_retention_all_keeps_every_visit(tmp_path):
    search = mh.GridSearch(make_estimator, {"lr": 0.05}, epochs=2)
    result = search.fit(mh.datasets.digits(), n_workers=2, checkpoints="all", run_dir=tmp_path)
    files = list((tmp_path / "checkpoints" / "mst-00000").glob("*.state"))
    assert len(files) == result.stats.n_visits


def test_bad_retention_is_rejected(tmp_path):
    search = mh.GridSearch(make_estimator, {"lr": 0.05}, epochs=1)
    with pytest.raises(mh.ConfigError, match=r"checkpoints must be one of 'latest\+best'"):
        search.fit(mh.datasets.digits(), checkpoints="some")
