"""`modelhopper run/resume --executor ray`: the executor chosen on the command line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from modelhopper.cli import app

SPEC = textwrap.dedent(
    """
    import torch
    from torch import nn
    import modelhopper as mh

    def make_estimator(p):
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                            loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32)

    data = mh.datasets.digits
    search = mh.GridSearch(make_estimator, {"lr": mh.grid([1e-3, 3e-3])}, epochs=2,
                           metric="val_accuracy", direction="maximize", seed=1)
    """
)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "gpu"], "--executor must be 'local' or 'ray', got 'gpu'"),
        (["--address", "auto"], "--address is for --executor ray"),
    ],
)
def test_bad_executor_options_are_explained(tmp_path, options, message):
    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    result = CliRunner().invoke(app, ["run", str(spec), *options])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())


@pytest.mark.slow
def test_run_on_ray_from_the_command_line(tmp_path, ray_lock):
    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    with ray_lock():
        done = subprocess.run(
            [sys.executable, "-m", "modelhopper.cli", "run", str(spec), "--executor", "ray",
             "--store", f"sqlite:///{tmp_path}/db.sqlite", "--run-name", "onray"],
            capture_output=True, text=True, timeout=600, env={"RAY_USAGE_STATS_ENABLED": "0",
            **__import__("os").environ},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run onray" in done.stdout and "efficiency" in done.stdout
    import modelhopper as mh

    result = mh.load_result("onray", store=f"sqlite:///{tmp_path}/db.sqlite")
    assert result.provenance["executor"] == "RayExecutor"
    assert all(m.status is mh.MSTStatus.COMPLETED for m in result.msts)
