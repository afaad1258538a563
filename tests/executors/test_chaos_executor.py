"""ChaosExecutor: kills at planned visits and launches, each one noticed and survived."""

from __future__ import annotations

import random
import sys

import pytest

from modelhopper.testing import ChaosExecutor, KillPlan
from modelhopper.testing._executor import _dataset, _task, _train

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL of Linux processes")


def test_a_drawn_plan_fits_its_visits_and_survives_json():
    plan = KillPlan.draw(random.Random(4), visits=20, running=5, replacements=2, driver=True)
    assert len(plan.running) == 5 and sum(plan.running.values()) == 2
    assert all(1 <= v < 20 for v in plan.running) and plan.driver == 20
    assert plan.start_up == {1} and plan.worker_kills == 8
    assert KillPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="6 running kills do not fit in 6 visits"):
        KillPlan.draw(random.Random(0), visits=6, running=6, replacements=0)


def test_each_planned_kill_is_made_noticed_and_its_visit_run_again(tmp_path):
    from modelhopper.data._sharding import write_shards
    from modelhopper.testing import make_test_estimator

    shards = write_shards(_dataset(), 2, tmp_path / "shards", seed=0)
    plan = KillPlan(start_up=frozenset({2}), running={1: True, 3: False})
    executor = ChaosExecutor(plan, log=tmp_path / "kills.jsonl", max_restarts=3)
    executor.start(shards, make_test_estimator)
    try:
        results = []
        for visit in range(4):  # visits 1 and 3 crash: worker 0 died running them
            executor.submit(visit % 2, _task(0, (_train(0, visit % 2, 0),)))
            results += executor.wait()
    finally:
        executor.shutdown()
    assert [r.crashed for r in results] == [True, False, True, False]
    assert [k.moment for k in executor.kills] == ["start-up", "running", "start-up", "running"]
    assert executor.restarts == [3, 1]  # worker 0: running, its replacement, running again
    assert len((tmp_path / "kills.jsonl").read_text().splitlines()) == 4
