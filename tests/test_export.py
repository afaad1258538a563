"""Export of a run: files in three formats, and MLflow (a real local tracking directory)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.export import export_files, export_mlflow


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
    return mh.Estimator(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32,
    )  # fmt: skip


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    search = mh.GridSearch(make_estimator, {"hidden": mh.grid([8, 16])}, epochs=2)
    return search.fit(
        mh.datasets.digits(),
        n_workers=2,
        run_name="exp",
        store=f"sqlite:///{folder}/db.sqlite",
        run_dir=folder / "run",
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_files_hold_msts_and_history(result, tmp_path, fmt):
    msts_path, history_path = export_files(result, tmp_path, fmt)
    read = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": pd.read_json}[fmt]
    msts, history = read(msts_path), read(history_path)
    assert sorted(msts["mst_id"]) == [0, 1]
    assert list(msts.columns) == list(result.to_dataframe().columns)
    assert len(history) == 4
    assert history["val_accuracy"].tolist() == pytest.approx(
        result.history()["val_accuracy"].tolist()
    )
    assert json.loads(history["train_order"].iloc[0]) == result.history()["train_order"].iloc[0]


def test_mlflow_gets_one_run_per_mst_with_params_and_epoch_metrics(result, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores opt-in
    uri = (tmp_path / "mlruns").as_uri()
    assert export_mlflow(result, uri) == 2
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("exp")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"mst-0", "mst-1"}
    for mst in result.msts:
        run = runs[f"mst-{mst.id}"]
        assert run.data.params == {"hidden": str(mst.params["hidden"])}
        assert run.data.tags["modelhopper.status"] == "completed"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1]
        assert sorted(history, key=lambda m: m.step)[-1].value == pytest.approx(
            mst.metrics["val_accuracy"]
        )
