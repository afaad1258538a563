"""Static outputs for people who run no server: ``modelhopper report`` and ``Result.plot``."""

from __future__ import annotations

import re
import sys

import pytest
from typer.testing import CliRunner

import modelhopper as mh
from modelhopper.cli import app
from modelhopper.errors import ConfigError
from modelhopper.server import write_report

runner = CliRunner()


def test_report_is_one_self_contained_file(store, tmp_path):
    path = write_report(store, "fake", tmp_path / "report.html")
    html = path.read_text()
    assert "uPlot" in html and "ModelHopper.runPage" in html  # scripts inlined
    assert not re.search(r"""(src|href)=["'](https?:|/)""", html)  # nothing fetched
    assert '"live": false' in html and '"val_accuracy"' in html  # the run's data embedded
    assert "report generated" in html


def test_report_command(store, tmp_path):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", "fake", "--out", str(out), "--store", store.url])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "") and out.stat().st_size > 50_000


@pytest.mark.parametrize(
    ("run", "out", "message"),
    [("nope", "r.html", "no run named 'nope'"), ("fake", ".", "is a folder"),
     ("fake", "missing/r.html", "does not exist")],
)  # fmt: skip
def test_report_errors(store, tmp_path, run, out, message):
    result = runner.invoke(app, ["report", run, "--out", out, "--store", store.url])
    assert result.exit_code == 2 and message in result.output.replace("\n", " ")


def test_plot_draws_curves_and_the_timeline(store, tmp_path):
    result = mh.load_result("fake", store=store)
    figure = result.plot(tmp_path / "run.png", top=4, store=store)
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves, timeline = figure.axes
    assert len(curves.lines) == 4 and curves.get_ylabel() == "val_accuracy"
    assert [line.get_label().split(":")[0] for line in curves.lines] == [
        f"MST {i}" for i in range(4)
    ]
    assert len(timeline.collections) == 36  # one bar per visit
    assert "18 hops" in timeline.get_title()
    assert result.plot(metric="val_loss", store=store).axes[0].get_ylabel() == "val_loss"


def test_plot_errors(store, monkeypatch):
    result = mh.load_result("fake", store=store)
    with pytest.raises(ConfigError, match="metric 'nope' is not recorded for this run"):
        result.plot(metric="nope", store=store)
    with pytest.raises(ConfigError, match="top must be an integer >= 1, got 0"):
        result.plot(top=0, store=store)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ConfigError, match="needs matplotlib.*pip install matplotlib"):
        result.plot(store=store)


def test_dashboard_command_prints_the_token_and_serves(store, monkeypatch):
    import modelhopper.server as server

    served = {}
    monkeypatch.setattr(server, "serve", lambda db, **kw: served.update(url=db.url, **kw))
    monkeypatch.setenv("MODELHOPPER_TOKEN", "s3cret")
    result = runner.invoke(app, ["dashboard", "--store", store.url, "--port", "9999"])
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:9999/?token=s3cret" in result.output.replace("\n", "")
    assert served == {"url": store.url, "host": "127.0.0.1", "port": 9999, "token": "s3cret"}
    exposed = runner.invoke(app, ["dashboard", "--store", store.url, "--host", "0.0.0.0"])
    assert "anyone who reaches this port can read the runs" in exposed.output.replace("\n", " ")


def test_dashboard_command_without_the_extra(store, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name)
    )
    result = runner.invoke(app, ["dashboard", "--store", store.url])
    assert result.exit_code == 2
    assert "pip install 'modelhopper[dashboard]'" in result.output.replace("\n", "")


@pytest.mark.slow  # a fresh interpreter imports torch
def test_core_imports_without_the_dashboard():
    import subprocess

    code = (
        "import sys, modelhopper, modelhopper.cli, modelhopper.server; "
        "print([m for m in ('fastapi', 'uvicorn', 'jinja2', 'starlette') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
