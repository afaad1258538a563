"""The CLI: `demo` and `run SPEC.py`, run in-process with typer's runner."""

from __future__ import annotations

import textwrap

from typer.testing import CliRunner

from modelhopper.cli import app

runner = CliRunner()

SPEC = """
import torch
from torch import nn
import modelhopper as mh

def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
    return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=64)

space = {"hidden": mh.grid([16, 32]), "lr": 3e-3}
data = mh.datasets.digits
search = mh.GridSearch(make_estimator, space, epochs=2, metric="val_accuracy", direction="maximize")
"""


def test_run_spec_trains_the_search_it_defines(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text(textwrap.dedent(SPEC))
    out = runner.invoke(app, ["run", str(spec), "--workers", "2", "--run-dir", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    assert "MSTs by val_accuracy (maximize)" in out.output
    assert "best MST" in out.output and "efficiency" in out.output
    assert list((tmp_path / "r" / "checkpoints" / "mst-00000").glob("step-*.pt"))


def test_run_spec_missing_names(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text("x = 1\n")
    out = runner.invoke(app, ["run", str(spec)])
    assert out.exit_code == 2
    assert "must define search and data" in out.output


def test_run_spec_missing_file(tmp_path):
    out = runner.invoke(app, ["run", str(tmp_path / "nope.py")])
    assert out.exit_code == 2
    assert "does not exist" in out.output


def test_demo_small(tmp_path):
    out = runner.invoke(
        app, ["demo", "--n-msts", "2", "--epochs", "1", "--run-dir", str(tmp_path / "d")]
    )
    assert out.exit_code == 0, out.output
    assert "modelhopper demo" in out.output and "best MST" in out.output


def test_demo_bad_workers_is_a_clear_error(tmp_path):
    out = runner.invoke(app, ["demo", "--workers", "0", "--run-dir", str(tmp_path / "d")])
    assert out.exit_code == 2
    assert "n_workers must be an integer >= 1, got 0" in out.output


def test_ls_show_and_export_read_the_store(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text(textwrap.dedent(SPEC))
    store = f"sqlite:///{tmp_path}/runs.db"
    out = runner.invoke(app, ["run", str(spec), "--run-name", "first", "--store", store])
    assert out.exit_code == 0, out.output
    listing = runner.invoke(app, ["ls", "--store", store])
    assert listing.exit_code == 0 and "first" in listing.output and "completed" in listing.output
    watched = runner.invoke(app, ["status", "first", "--watch", "--store", store])
    assert watched.exit_code == 0 and "MSTs by val_accuracy" in watched.output  # ends: completed
    shown = runner.invoke(app, ["show", "first", "--store", store])
    assert shown.exit_code == 0, shown.output
    assert "data_sha256" in shown.output and "MSTs by val_accuracy" in shown.output
    for fmt in ("csv", "parquet", "json"):
        exported = runner.invoke(
            app, ["export", "first", "--format", fmt, "--out", str(tmp_path), "--store", store]
        )
        assert exported.exit_code == 0, exported.output
        assert (tmp_path / f"first-msts.{fmt}").exists()
        assert (tmp_path / f"first-history.{fmt}").exists()
    missing = runner.invoke(app, ["show", "nope", "--store", store])
    assert missing.exit_code == 2 and "first" in missing.output  # the error lists known runs
    bad = runner.invoke(app, ["export", "first", "--format", "xls", "--store", store])
    assert bad.exit_code == 2 and "format must be one of csv, parquet, json" in bad.output
    again = runner.invoke(app, ["run", str(spec), "--run-name", "first", "--store", store])
    assert again.exit_code == 2 and "already exists" in again.output
