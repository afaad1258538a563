"""Representations on RayExecutor: the same ShardWorker, so the same materialised training."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.estimator import state_from_bytes

pytestmark = pytest.mark.slow


def polynomial(x: torch.Tensor, *, degree: int) -> torch.Tensor:
    return torch.cat([(x - 0.5) ** k for k in range(1, degree + 1)], dim=1)


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64 * p["degree"], 16), nn.ReLU(), nn.Linear(16, 10))
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss=nn.CrossEntropyLoss(),
        representation=mh.Representation("poly", polynomial, params={"degree": p["degree"]}),
    )


def _fit(executor, tmp_path, name):
    search = mh.GridSearch(make_estimator, {"degree": mh.grid([1, 2])}, epochs=2, seed=4)
    return search.fit(
        mh.datasets.digits(seed=0), n_workers=2, run_dir=tmp_path / name, executor=executor
    )


def test_ray_trains_representation_msts_like_local_processes(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'modelhopper[ray]'")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20)
    try:
        on_ray = _fit(mh.RayExecutor(threads_per_worker=1), tmp_path, "ray")
    finally:
        ray.shutdown()
    local = _fit(mh.LocalExecutor(threads_per_worker=1), tmp_path, "local")
    for a, b in zip(on_ray.msts, local.msts, strict=True):
        assert a.status is mh.MSTStatus.COMPLETED, a
        state_a = state_from_bytes(a.checkpoint.read_bytes())["model"]
        state_b = state_from_bytes(b.checkpoint.read_bytes())["model"]
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_b)
