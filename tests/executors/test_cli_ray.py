"""`modelhopper run/resume --executor ray`: the executor chosen on the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


@pytest.fixture
def ray_tmpdir_naming_a_dead_cluster():
    """A Ray temp dir whose ray_current_cluster names a cluster that is gone.

    `ray start` (or a loopback test cluster) leaves that file behind; Ray's own
    ``ray.init()`` joins the address in it and hangs. Short path: Ray's Unix sockets live there.
    """
    folder = tempfile.mkdtemp(prefix="mh-ray-", dir="/tmp")
    os.mkdir(os.path.join(folder, "ray"))
    with open(os.path.join(folder, "ray", "ray_current_cluster"), "w") as f:
        f.write("127.0.0.1:9")  # the discard port: nothing answers there
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_run_on_ray_from_the_command_line(tmp_path, ray_lock, ray_tmpdir_naming_a_dead_cluster):
    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TMPDIR": ray_tmpdir_naming_a_dead_cluster}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    with ray_lock():
        done = subprocess.run(
            [sys.executable, "-m", "modelhopper.cli", "run", str(spec), "--executor", "ray",
             "--store", f"sqlite:///{tmp_path}/db.sqlite", "--run-name", "onray"],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
    # No --address: a new local instance, never the dead cluster the temp dir names.
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run onray" in done.stdout and "efficiency" in done.stdout
    import modelhopper as mh

    result = mh.load_result("onray", store=f"sqlite:///{tmp_path}/db.sqlite")
    assert result.provenance["executor"] == "RayExecutor"
    assert all(m.status is mh.MSTStatus.COMPLETED for m in result.msts)
