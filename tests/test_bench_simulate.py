from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "simulate.py"
TIMINGS = {"us_per_decision", "decide_seconds", "wall_seconds"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_simulate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def smoke(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("simulate")
    report = bench.main(["--smoke-test", "--out", str(out)])
    return out, report


def test_smoke_run_writes_every_output(smoke):
    out, _ = smoke
    for name in ["simulate.json", "simulate.md", "simulate_ratio.png", "simulate_utilisation.png"]:
        assert (out / name).stat().st_size > 0, name
    assert "| scenario |" in (out / "simulate.md").read_text()


def test_json_has_every_scenario_and_policy(bench, smoke):
    out, _ = smoke
    report = json.loads((out / "simulate.json").read_text())
    assert set(report) == {"meta", "targets", "results", "replicas", "elastic", "hybrid"}
    rows = report["results"]
    names = {s.name for s in bench.scenarios(smoke=True)}
    assert {(r["scenario"], r["policy"]) for r in rows} == {
        (name, policy)
        for name in names
        for policy in ("random", "longest_remaining", "oldest_first")
    }
    assert {r["kind"] for r in rows} == {
        "balanced",
        "spread",
        "spread+straggler",
        "spread+straggler+early stop",
    }
    keys = {
        "makespan",
        "lower_bound",
        "makespan_over_bound",
        "utilisation",
        "n_decisions",
        "us_per_decision",
    }
    for row in rows:
        assert keys <= set(row)
        assert row["n_decisions"] > 0 and row["us_per_decision"] > 0
        assert 0 < row["utilisation"] <= row["utilisation_at_bound"] + 1e-6


def test_makespan_is_never_below_the_bound(smoke):
    _, report = smoke
    for row in report["results"]:
        assert row["makespan"] >= row["lower_bound"] - 1e-6, row["scenario"]


def test_balanced_small_scenario_is_within_five_percent(smoke):
    _, report = smoke
    (row,) = [
        r
        for r in report["results"]
        if r["scenario"] == "balanced 8x2" and r["policy"] == "longest_remaining"
    ]
    assert row["makespan_over_bound"] <= 1.05
    (target,) = [t for t in report["targets"] if t["scenario"] == "balanced 8x2"]
    assert target["met"] is True


def test_early_stopping_stops_the_worse_half(smoke):
    _, report = smoke
    rows = [r for r in report["results"] if r["early_stop"]]
    assert rows
    for row in rows:
        assert row["n_stopped"] == row["n_msts"] // 2
    # Stopping changes the work: fewer decisions than the same MSTs run to the end.
    stopped = rows[0]
    assert stopped["n_decisions"] < stopped["n_msts"] * stopped["n_epochs"] * (
        2 * stopped["n_workers"] - 1
    )


def test_results_are_deterministic_except_timings(bench, tmp_path, smoke):
    _, first = smoke
    again = bench.main(["--smoke-test", "--out", str(tmp_path)])

    def strip(report):
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in report["results"]]

    assert strip(first) == strip(again)


def test_replicas_take_the_straggler_out_of_the_makespan(smoke):
    """With one copy every MST must visit the 2x slower worker's shard there; with a second
    holder of each shard the scheduler routes around it (makespan near capacity); with
    logical shards owned in proportion to speed, the straggler carries half the work."""
    _, report = smoke
    rows = {(r["straggler"], r["replicas"], r["n_shards"]): r for r in report["replicas"]}
    assert set(rows) == {(s, r, n) for s in (False, True) for r, n in
                         ((1, 4), (2, 4), (4, 4), (1, 16))}  # fmt: skip
    one, two = rows[True, 1, 4]["makespan"], rows[True, 2, 4]["makespan"]
    assert two < 0.7 * one
    assert rows[True, 2, 4]["makespan_over_bound"] < 1.15 < rows[True, 1, 4]["makespan_over_bound"]
    weighted = rows[True, 1, 16]
    assert weighted["makespan"] < 0.75 * one and weighted["makespan_over_bound"] < 1.2
    for straggler in (False, True):  # whole data on every worker: one visit per epoch
        assert rows[straggler, 4, 4]["n_visits"] == 16 * 2


def test_elastic_pools_finish_between_the_fixed_ones(smoke):
    _, report = smoke
    rows = {r["layout"]: r for r in report["elastic"]}
    assert list(rows) == ["fixed half", "fixed all", "half, then all", "all, then half"]
    half, full = rows["fixed half"]["makespan"], rows["fixed all"]["makespan"]
    assert full < rows["half, then all"]["makespan"] < rows["all, then half"]["makespan"] < half
    assert all(r["makespan_over_bound"] < 1.15 for r in rows.values())
