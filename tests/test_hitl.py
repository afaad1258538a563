"""Human-in-the-loop control of a running run: commands from another process, and from Python."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import modelhopper as mh
from modelhopper.cli import app
from modelhopper.store import CommandStatus, EventKind, SQLStore

pytestmark = pytest.mark.slow
runner = CliRunner()

SPEC = textwrap.dedent(
    """
    import torch
    from torch import nn
    import modelhopper as mh

    def make_estimator(p):
        model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
        return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                            loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=8)

    space = {"hidden": mh.grid([32, 64]), "lr": mh.choice([1e-3, 3e-3])}
    data = mh.datasets.digits
    search = mh.GridSearch(make_estimator, space, epochs=10, metric="val_accuracy",
                           direction="maximize", seed=1)
    """
)


def _wait_for_steps(store: SQLStore, name: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(store.list_steps(name)) >= n:
                return
        except mh.StoreError:
            pass  # not recorded yet
        time.sleep(0.05)
    raise AssertionError(f"run {name} did not reach {n} steps")


def _cli(*args: str) -> str:
    out = runner.invoke(app, list(args))
    assert out.exit_code == 0, out.output
    return out.output


def _cli_error(*args: str) -> str:
    out = runner.invoke(app, list(args))
    assert out.exit_code == 2, out.output
    return out.output


def test_commands_from_another_process_steer_a_running_run(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    driver = subprocess.Popen(
        [sys.executable, "-m", "modelhopper.cli", "run", str(spec), "--run-name", "hitl",
         "--store", url, "--run-dir", str(tmp_path / "run")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    store = SQLStore(url)
    try:
        _wait_for_steps(store, "hitl", 4)
        # Invalid commands: a clear error, nothing queued.
        assert "has no MST 99" in _cli_error("stop", "hitl", "99", "--store", url)
        bad = _cli_error("clone", "hitl", "0", "--set", "lr=0.5", "--store", url)
        assert "lr" in bad and "0.001" in bad  # names the parameter and its allowed values
        assert "nope" in _cli_error("add", "hitl", "--set", "nope=1", "--store", url)
        assert store.list_commands("hitl") == []
        # Valid ones, each applied by the driver at its next scheduling step.
        assert "stopped MST 1" in _cli("stop", "hitl", "1", "--store", url)
        assert "cloned MST 0 as MST 4" in _cli(
            "clone", "hitl", "0", "--set", "lr=0.003", "--store", url
        )
        assert "added MST 5" in _cli(
            "add", "hitl", "--set", "hidden=32", "--set", "lr=0.001", "--epochs", "2",
            "--store", url,
        )  # fmt: skip
        assert "priority 7" in _cli("priority", "hitl", "2", "7", "--store", url)
        assert "MSTs by val_accuracy" in _cli("status", "hitl", "--store", url)
    finally:
        _, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr

    msts = {m.mst_id: m for m in store.list_msts("hitl")}
    assert msts[1].status == "stopped"
    commands = store.list_commands("hitl")
    assert [c.kind for c in commands] == ["stop", "clone", "add", "priority"]
    assert all(c.status is CommandStatus.APPLIED for c in commands)
    # A stopped MST never gets another visit: at most the one in flight finishes.
    stop_applied = commands[0].applied_at
    late = [s for s in store.list_steps("hitl", 1) if s.finished_at > stop_applied]
    assert len({s.finished_at for s in late}) <= 1  # a visit's steps share its finish time
    assert len(store.list_epochs("hitl", 1)) < 10
    clone = msts[4]
    assert (clone.parent, clone.warm_start, clone.params) == (0, True, {"hidden": 32, "lr": 0.003})
    assert clone.status == "completed" and len(store.list_epochs("hitl", 4)) == 10
    # Warm start: the clone begins from MST 0's trained weights, not from scratch.
    first = {m: store.list_epochs("hitl", m)[0].metrics["train_loss"] for m in (0, 4)}
    assert first[4] < first[0]
    assert msts[5].status == "completed" and len(store.list_epochs("hitl", 5)) == 2
    assert msts[2].priority == 7
    events = [e for e in store.list_events("hitl") if e.kind is EventKind.COMMAND]
    assert [e.detail["kind"] for e in events] == ["stop", "clone", "add", "priority"]
    assert "is completed; commands reach only a running run" in _cli_error(
        "stop", "hitl", "0", "--store", url
    )


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return mh.Estimator(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=8,
    )  # fmt: skip


def test_a_run_handle_steers_a_run_from_python(tmp_path):
    # 30 epochs: MST 1 must still be running when the stop below is applied (8 epochs of
    # digits once ended first on a loaded CI machine, and the stop was rejected).
    search = mh.GridSearch(make_estimator, {"lr": mh.grid([0.01, 0.02])}, epochs=30)
    run = search.start(
        mh.datasets.digits(),
        n_workers=2,
        run_name="py",
        store=f"sqlite:///{tmp_path}/db.sqlite",
        run_dir=tmp_path / "run",
    )
    assert sorted(run.status()["mst_id"]) == [0, 1]  # start() returns with every first MST
    keeper = run.add({"lr": 0.02}, epochs=10_000)  # holds the run open until stopped below
    short = run.add({"lr": 0.01}, epochs=1)
    run.stop(1)
    with pytest.raises(mh.ConfigError, match="MST 1 is already stopped; nothing to stop"):
        run.stop(1)
    run.resume(1)
    deadline = time.monotonic() + 300
    while run.status().set_index("mst_id").loc[short, "status"] != "completed":
        assert time.monotonic() < deadline, f"MST {short} did not complete"
        time.sleep(0.05)  # the one-epoch MST finishes while the keeper goes on
    with pytest.raises(mh.ConfigError, match=f"MST {short} is already completed"):
        run.stop(short)
    with pytest.raises(mh.SpaceError, match="lr"):
        run.clone(0, {"lr": "fast"})
    run.stop(keeper)
    result = run.wait(timeout=600)
    assert run.done
    statuses = {m.id: m.status for m in result.msts}
    assert statuses == {0: "completed", 1: "completed", keeper: "stopped", short: "completed"}
    assert len(result.msts[1].history) == 30  # resumed after its stop, it finished its epochs
