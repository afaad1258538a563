"""The CLI: `demo` and `run SPEC.py`, run in-process with typer's runner."""

from __future__ import annotations

import sys
import textwrap

import pytest
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
    assert list((tmp_path / "r" / "checkpoints" / "mst-00000").glob("step-*.state"))


def test_run_spec_over_logical_shards(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text(textwrap.dedent(SPEC))
    store = f"sqlite:///{tmp_path}/runs.db"
    args = ["run", str(spec), "--workers", "2", "--store", store, "--run-name", "logical"]
    out = runner.invoke(app, [*args, "--shards", "4", "--run-dir", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    from modelhopper.store import SQLStore

    with SQLStore(store) as db:
        record = db.get_experiment("logical")
        assert (record.n_workers, record.spec["n_shards"]) == (2, 4)
        assert {s.shard for s in db.list_steps("logical")} == {0, 1, 2, 3}
    too_few = runner.invoke(app, ["run", str(spec), "--workers", "2", "--shards", "1"])
    assert too_few.exit_code != 0
    assert "n_shards=1 is fewer than the n_workers=2 workers" in too_few.output


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


def _one_line(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"spec.py": "x = 1\ndef f(:\n    pass\n"}, "{spec}:2: SyntaxError: invalid syntax"),
        (
            {"spec.py": "import os\nimport no_such_module_here\n"},
            "{spec}:2: ModuleNotFoundError: No module named 'no_such_module_here'",
        ),
        (
            {"spec.py": "import helper_for_spec\n", "helper_for_spec.py": "x = 1\ny = 1 / 0\n"},
            "{helper}:2: ZeroDivisionError: division by zero (imported from {spec}:1)",
        ),
    ],
    ids=["syntax", "import", "in-a-module-it-imports"],
)
def test_run_spec_that_cannot_load_is_one_line(tmp_path, monkeypatch, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))  # so the spec finds its helper module
    monkeypatch.delitem(sys.modules, "helper_for_spec", raising=False)
    spec, helper = tmp_path / "spec.py", tmp_path / "helper_for_spec.py"
    out = runner.invoke(app, ["run", str(spec)])
    assert out.exit_code == 2, out.output
    expected = f"error: cannot load spec {spec}: " + message.format(spec=spec, helper=helper)
    assert _one_line(out.output) == expected
    assert "Traceback" not in out.output


@pytest.mark.parametrize("name", ["a/b", "", "../up", "x" * 101, "two words"])
def test_run_spec_with_a_bad_run_name(tmp_path, name):
    spec = tmp_path / "spec.py"
    spec.write_text(textwrap.dedent(SPEC))
    out = runner.invoke(app, ["run", str(spec), "--run-name", name, "--run-dir", str(tmp_path)])
    assert out.exit_code == 2, out.output
    assert "run_name must be 1 to 100 letters, digits, '.', '_' or '-'" in _one_line(out.output)
    assert not (tmp_path / "shards").exists()  # refused before anything was written


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
