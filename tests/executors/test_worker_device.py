"""ShardWorker's device: models go to it, batches follow, states hop in CPU form."""

from __future__ import annotations

import torch

from modelhopper.data._sharding import open_shard, write_shards
from modelhopper.estimator import state_from_bytes
from modelhopper.executors import StateSource, VisitTask
from modelhopper.executors._worker import ShardWorker
from modelhopper.scheduling import Step, StepKind
from modelhopper.testing import make_test_estimator
from modelhopper.testing._executor import _dataset

STEPS = (Step(StepKind.TRAIN, 0, 0, 0), Step(StepKind.EVAL, 0, 0, 0))


def test_a_worker_on_an_explicit_device_trains_the_same_and_hops_cpu_state(tmp_path):
    (info,) = write_shards(_dataset(), 1, tmp_path, seed=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default = ShardWorker(0, {0: open_shard(info.path)}, 1, make_test_estimator)
    placed = ShardWorker(0, {0: open_shard(info.path)}, 1, make_test_estimator, device=device)
    task = VisitTask(1, {"hidden": 8}, 5, STEPS, StateSource.FRESH)
    got, want = placed.run(task), default.run(task)
    assert got.error is None, got.error
    estimator, _ = placed._cache[1]
    assert next(estimator.model.parameters()).device.type == device
    state = state_from_bytes(got.state)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    if device == "cpu":  # same kernels: the same numbers
        for name, tensor in state_from_bytes(want.state)["model"].items():
            assert torch.equal(state["model"][name], tensor), name
    # The state continues on a worker without the device (a hop to a CPU worker).
    resumed = default.run(VisitTask(1, {"hidden": 8}, 5, STEPS, StateSource.SENT, got.state))
    assert resumed.error is None, resumed.error
