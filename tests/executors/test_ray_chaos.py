"""The chaos benchmark on a loopback Ray cluster: its own file, so pytest-xdist can run it
beside the local chaos tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="finds actors by their process title"),
]


def test_the_chaos_benchmark_runs_on_a_loopback_ray_cluster(ray_lock, tmp_path):
    """Actor kills (some while starting), a node removed and a driver kill on Ray."""
    pytest.importorskip("ray", reason="Ray is an extra: pip install 'modelhopper[ray]'")
    script = Path(__file__).parents[2] / "bench" / "chaos.py"
    with ray_lock():
        done = subprocess.run(
            [sys.executable, str(script), "--smoke-test", "--executor", "ray",
             "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "chaos_ray_smoke.json").read_text())
    assert report["worker_kills_survived"] == 5 and report["worker_kills_at_start_up"] == 3
    assert report["driver_kills_survived"] == 1 and report["node_removals_survived"] == 1
    assert report["msts_lost"] == report["msts_added"] == report["steps_recorded_twice"] == 0
    assert report["metric_differences"] == 0
