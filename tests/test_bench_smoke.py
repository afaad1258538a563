"""The benchmarks run from a clean clone in their tiny --smoke-test size (results to tmp)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).parent.parent / "bench"


def _run(script: str, out: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke-test", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_mop_efficiency_smoke(tmp_path):
    _run("mop_efficiency.py", tmp_path)
    rows = json.loads((tmp_path / "mop_efficiency_smoke.json").read_text())["results"]
    assert [r["workload"] for r in rows] == ["small CNN", "MLP 784-256-10"]
    for row in rows:
        assert row["data_copies"] == 1.0
        assert 0 < row["efficiency"] <= 1.05
        assert row["wall_seconds"] >= row["lower_bound_seconds"]  # no schedule beats the bound


def test_store_overhead_smoke(tmp_path):
    _run("store_overhead.py", tmp_path)
    (row,) = json.loads((tmp_path / "store_overhead_smoke.json").read_text())
    assert row["row_counts"]["msts"] == 10
    assert row["row_counts"]["steps"] == row["n_steps"] == 10 * 1 * 2 * 2
    assert row["record_ms_per_step"] > 0


def test_procedures_smoke(tmp_path):
    _run("procedures.py", tmp_path)
    data = json.loads((tmp_path / "procedures_smoke.json").read_text())
    names = [r["procedure"] for r in data["results"]]
    assert names[0].startswith("ASHA") and "SuccessiveHalving (barrier)" in names
    assert any(r["time_to_target_seconds"] is not None for r in data["results"])
    for row in data["results"]:
        assert 0 < row["utilisation"] <= 1.05


def test_ray_efficiency_smoke(tmp_path, ray_lock):
    with ray_lock():
        _run("ray_efficiency.py", tmp_path)
    rows = json.loads((tmp_path / "ray_efficiency_smoke.json").read_text())["results"]
    setups = [r["setup"] for r in rows]
    assert setups == ["LocalExecutor", "RayExecutor, 1 node", "RayExecutor, 2 nodes (loopback)"]
    for row in rows:
        assert row["data_copies"] == 1.0 and 0 < row["efficiency"] <= 1.05
    two_nodes = rows[-1]
    assert two_nodes["n_nodes"] == 2 and len(two_nodes["shard_bytes_per_node"]) == 2
    # Same seeds, same shard orders: the same training whichever executor ran it.
    assert len({r["best_val_accuracy"] for r in rows}) == 1


def test_footprint_smoke_on_ray(tmp_path, ray_lock):
    with ray_lock():
        _run("footprint.py", tmp_path)
    data = json.loads((tmp_path / "footprint_smoke.json").read_text())
    dataset = data["meta"]["dataset_bytes"]
    tune, mop = data["results"]
    assert tune["system"].startswith("Ray Tune") and mop["system"].startswith("modelhopper")
    # Ray Tune: a whole copy on every worker node; MOP: one copy across all of them.
    assert tune["worker_nodes_used"] == mop["worker_nodes_used"] == 3
    assert all(b >= dataset for b in tune["data_bytes_per_node"].values())
    assert sum(mop["data_bytes_per_node"].values()) == dataset
    assert all(b < dataset for b in mop["data_bytes_per_node"].values())


def test_end_to_end_smoke(tmp_path):
    _run("end_to_end.py", tmp_path)
    rows = json.loads((tmp_path / "end_to_end_smoke.json").read_text())["results"]
    assert len(rows) == 3
    for row in rows:
        assert row["plain_loop_seconds"] > 0 and row["fit_seconds"] > 0
        assert row["side_by_side_seconds"] > 0 and row["fit_vs_side_by_side"] > 0
        assert 0 < row["ratio"] and 0 <= row["startup_seconds"] < row["fit_seconds"]
        assert row["peak_tree_pss_gib"] > 0 and row["n_visits"] > 0
        assert row["mean_val_accuracy_plain"] > 0.2 and row["mean_val_accuracy_mop"] > 0.2
        # measured twice, the plain loop first the second time, on the same MSTs
        assert [r["plain_first"] for r in row["repetitions"]] == [False, True]
        assert row["ratio"] == min(row["ratios"]) and len(row["ratios"]) == 2


def test_data_scale_smoke(tmp_path):
    _run("data_scale.py", tmp_path)
    data = json.loads((tmp_path / "data_scale_smoke.json").read_text())
    sharding = data["sharding"]
    assert sharding["folder_bytes"] >= 4 * 10**6 and sharding["shard_bytes"] >= 4 * 10**6
    assert sharding["shard_over_copy"] > 0 and sharding["write_shards_over_copy"] > 0
    assert abs(sum(sharding["n_train_per_shard"]) - 0.9 * sharding["n_images"]) <= 1
    assert sharding["peak_rss_mb"] >= sharding["baseline_rss_mb"] > 0
    assert [r["num_workers"] for r in data["pipeline"]] == [0, 2]
    assert all(r["ratio"] > 0 for r in data["pipeline"])
    mop = data["mop"]
    assert mop["n_msts"] == 8 and mop["ratio"] > 0
    assert mop["mean_val_accuracy_plain"] > 0.1 and mop["mean_val_accuracy_mop"] > 0.1


def test_soak_smoke(tmp_path):
    _run("soak.py", tmp_path)
    data = json.loads((tmp_path / "soak_smoke.json").read_text())
    assert data["meta"]["completed"] == data["meta"]["n_msts"] == 40
    rows = data["processes"]
    assert "driver" in rows and all(r["first_mib"] > 0 and r["ratio"] > 0 for r in rows.values())


def test_adapters_smoke(tmp_path):
    if not Path("/usr/share/wordnet/data.noun").is_file():
        why = "WordNet: sudo apt-get install wordnet-base (make data installs it)"
        if os.environ.get("MODELHOPPER_TEST_REQUIRE_DATA") == "1":
            pytest.fail(why)
        pytest.skip(why)
    pytest.importorskip("peft", reason="the transfer extra: pip install 'modelhopper[transfer]'")
    _run("adapters.py", tmp_path)
    data = json.loads((tmp_path / "adapters_smoke.json").read_text())
    assert 0 < data["lora_bytes_per_hop"] < 0.02 * data["full_bytes_per_hop"]
    assert 0 < data["shared_base_bytes"] < data["full_copies_bytes"]
    assert data["fit_seconds"] > 0 and data["plain_seconds"] > 0


def test_keras_grid_smoke(tmp_path):
    if importlib.util.find_spec("keras") is None:  # not imported here: it picks a backend
        pytest.skip("the keras extra: pip install 'modelhopper[keras]'")
    _run("keras_grid.py", tmp_path)
    data = json.loads((tmp_path / "keras_grid_smoke.json").read_text())
    assert data["fit_seconds"] > 0 and data["plain_seconds"] > 0 and data["ratio"] > 0
    assert data["mean_val_accuracy_mop"] > 0.5 and data["mean_val_accuracy_plain"] > 0.5


def test_anytime_smoke(tmp_path):
    pytest.importorskip("onnxruntime")
    _run("anytime.py", tmp_path)
    data = json.loads((tmp_path / "anytime_smoke.json").read_text())
    rows = data["table"]["4"]
    assert len(rows) == 40  # 34 modelhopper procedures and variants, 6 peer implementations
    for method, row in rows.items():
        assert 0 <= row["2"]["mean"] < 1, method  # every method heard some accuracy
    engine = [r for r in data["runs"] if r["method"].startswith("mh ")]
    assert all(r["visits"] > 0 and r["driver_seconds"] > 0 for r in engine)
    assert all(0 < r["utilisation"] <= 1 + 1e-9 for r in engine)
    assert (tmp_path / "anytime_smoke_4.png").stat().st_size > 0


def test_anytime_multi_objective_smoke(tmp_path):
    pytest.importorskip("onnxruntime")
    _run("anytime_mo.py", tmp_path)
    data = json.loads((tmp_path / "anytime_mo_smoke.json").read_text())
    rows = data["table"]
    assert len(rows) == 8  # 4 modelhopper procedures and variants, 4 peer implementations
    for method, row in rows.items():
        assert 0 <= row["2"]["mean"] < 1, method  # every method's front covers some area
    assert len(data["verdicts"]) == 2
    assert (tmp_path / "anytime_mo_smoke.png").stat().st_size > 0


def test_first_reports_smoke(tmp_path):
    pytest.importorskip("onnxruntime")
    _run("first_reports.py", tmp_path)
    data = json.loads((tmp_path / "first_reports_smoke.json").read_text())
    assert len(data["table"]) == 4  # 3 modelhopper data layouts, Syne Tune's ASHA
    for method, row in data["table"].items():
        assert 0 < row["mean"] <= 1, method  # FTE spent before the first report
    assert "| Syne Tune ASHA |" in (tmp_path / "first_reports_smoke.md").read_text()


def test_hybrid_smoke(tmp_path):
    _run("hybrid.py", tmp_path)
    payload = json.loads((tmp_path / "hybrid_smoke.json").read_text())
    for row in payload["lone_cnn"]:  # one MST on two workers: every epoch in a group
        assert row["off"]["group_epochs"] == 0
        assert row["auto"]["group_epochs"] == len(row["auto"]["val_accuracy"]) == 2
        assert row["speedup"] > 0
    for rows in (payload["asha"], payload["asha_cnn"]):  # (b): the MLPs, then (a)'s CNN
        assert [r["hybrid"] for r in rows] == ["off", "auto"]
        assert rows[0]["group_epochs"] == 0
        assert all(0 < r["utilisation"] < r["busy_share"] <= 1 for r in rows)
        assert all(r["epochs_trained"] >= 4 for r in rows)  # every one of the 4 MSTs
    steps = payload["meta"]["group_steps"]  # (b), why: the MLPs alone vs in a group
    assert [(r["hidden"], r["batch_size"]) for r in steps] == [(64, 64), (64, 128), (256, 64),
                                                                (256, 128)]  # fmt: skip
    assert all(r["group_ms_per_step"] > r["allreduce_ms_per_step"] > 0 for r in steps)
    markdown = (tmp_path / "hybrid_smoke.md").read_text()
    assert "## (b) ASHA:" in markdown and "## (b) ASHA with the small CNN:" in markdown


def test_ray_elastic_smoke(tmp_path, ray_lock):
    """Benchmark 5(c) in its smoke size: a node joins a loopback cluster mid-run and gets a
    worker, worker 0 is drained and its node leaves; the metrics equal the fixed pool's."""
    with ray_lock():
        _run("ray_elastic.py", tmp_path)
    fixed, moved = json.loads((tmp_path / "ray_elastic_smoke.json").read_text())["results"]
    assert fixed["layout"] == "fixed" and fixed["changes"] == []
    assert [(workers, cause) for workers, cause, _ in moved["changes"]] == [
        ([0, 1, 2], "joined"), ([1, 2], "command")
    ]  # fmt: skip
    assert moved["workers_that_trained"] == [0, 1, 2] and moved["copied_mb"] > 0
    assert fixed["max_accuracy_difference"] == moved["max_accuracy_difference"] == 0
    assert "# Nodes joining and leaving" in (tmp_path / "ray_elastic_smoke.md").read_text()
