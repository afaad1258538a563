"""bench/compare.py in its --smoke-test size: every system runs and reports sane figures.

The systems run in two halves: those that start Ray run with the other Ray tests
(``[ray]`` in their ids), the others beside them on the other xdist worker; each
half trains the sequential reference too, for the accuracy gaps.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "compare.py"
HAVE_RAY = importlib.util.find_spec("ray") is not None
HALVES = {
    "local": ["sequential", "mop_local", "ddp", "model_averaging"],
    "ray": ["sequential", "mop_ray", "ray_tune"],
}


@pytest.fixture(scope="module", params=list(HALVES))
def smoke(request, tmp_path_factory):
    if request.param == "ray" and not HAVE_RAY:
        pytest.skip("Ray is an extra: pip install 'modelhopper[ray]'")
    systems = HALVES[request.param]
    out = tmp_path_factory.mktemp(f"compare-{request.param}")
    command = [sys.executable, str(SCRIPT), "--smoke-test", "--systems", ",".join(systems),
               "--out", str(out)]  # fmt: skip
    lock = request.getfixturevalue("ray_lock")() if request.param == "ray" else nullcontext()
    with lock:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return systems, out, json.loads((out / "compare_smoke.json").read_text())


def test_writes_table_json_and_chart(smoke):
    _, out, _ = smoke
    for name in ["compare_smoke.json", "compare_smoke.md", "compare_smoke.png"]:
        assert (out / name).stat().st_size > 0, name
    table = (out / "compare_smoke.md").read_text()
    assert "| system | wall s |" in table and "Not run:" not in table


def test_every_system_has_sane_figures(smoke):
    systems, _, report = smoke
    rows = report["results"]
    assert [r["system"] for r in rows] == systems  # --systems ran exactly those
    meta = report["meta"]
    assert (meta["n_msts"], meta["epochs"], meta["workers"]) == (2, 1, 2)
    for r in rows:
        assert r["wall_seconds"] > 0 and r["compute_seconds"] > 0, r["system"]
        assert 0 < r["efficiency"] <= 1.05, r["system"]
        assert r["peak_rss_bytes_sum"] > 0 and r["n_processes"] >= 1, r["system"]
        assert all(b > 0 for b in r["data_bytes_per_worker"]), r["system"]
        assert len(r["msts"]) == 2
        for mst in r["msts"]:
            assert 0 <= mst["val_accuracy"] <= 1 and len(mst["history"]) == 1
            assert -1 <= mst["gap_to_sequential"] <= 1
        if r["system"] == "sequential":  # its own work is the yardstick of work
            assert r["efficiency_sequential_work"] == pytest.approx(r["efficiency"])
        else:
            assert r["bytes_communicated"] > 0, r["system"]
            assert r["n_processes"] >= 3, r["system"]  # the runner and a process per worker


def test_data_footprint_of_each_system(smoke):
    _, _, report = smoke
    rows = {r["system"]: r for r in report["results"]}
    dataset = rows["sequential"]["data_bytes_total"]  # one process holds one copy
    for name in ("mop_local", "mop_ray", "ddp", "model_averaging"):
        if name in rows:  # one copy in total, split between the workers
            assert rows[name]["data_bytes_total"] == pytest.approx(dataset, rel=0.01), name
            assert max(rows[name]["data_bytes_per_worker"]) < 0.6 * dataset, name
    if "ray_tune" in rows:  # the object store's copy and a copy in each running trial
        assert rows["ray_tune"]["data_bytes_total"] == 3 * dataset
        assert rows["ray_tune"]["bytes_communicated"] == 2 * dataset  # each trial fetched it


def test_no_process_of_the_run_is_left_behind(smoke):
    psutil = pytest.importorskip("psutil")
    _, _, report = smoke
    work_dir = report["meta"]["work_dir"]  # Ray's session and Tune's storage live there
    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(work_dir in part for part in process.info["cmdline"] or []):
            left.append(process.info)
    assert not left


def test_same_seed_same_training_gives_the_same_accuracy(smoke):
    _, _, report = smoke
    rows = {r["system"]: r for r in report["results"]}
    assert rows["sequential"]["max_abs_gap_to_sequential"] == 0
    seeds = [[m["seed"] for m in r["msts"]] for r in rows.values()]
    assert all(s == seeds[0] for s in seeds)  # every system trained the same MSTs
    if "ray_tune" in rows:  # a trial runs the sequential passes in a process of its own
        assert rows["ray_tune"]["max_abs_gap_to_sequential"] == 0


def test_systems_option_refuses_unknown_names(tmp_path):
    from_cli = subprocess.run(
        [sys.executable, str(SCRIPT), "--systems", "ddp,bogus", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert from_cli.returncode == 2
    assert "--systems takes names from sequential, mop_local" in from_cli.stderr
