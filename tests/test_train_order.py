"""``train_order="any"`` on real workers: each sub-epoch on whichever untrained shard's
worker is free; every epoch still trains on every shard once, and the models learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.store import SQLStore


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    return mh.Estimator(model=model, optimizer=optimizer, loss=nn.CrossEntropyLoss(),
                        metrics=["accuracy"], batch_size=32)  # fmt: skip


@pytest.mark.slow
def test_any_train_order_trains_every_shard_once_per_epoch_on_real_workers(tmp_path):
    n_workers, epochs = 3, 2
    store = f"sqlite:///{tmp_path}/runs.db"
    search = mh.GridSearch(
        make_estimator, {"lr": mh.grid([3e-3, 1e-2, 3e-2])}, epochs=epochs,
        metric="val_accuracy", direction="maximize", seed=1, train_order="any",
    )  # fmt: skip
    result = search.fit(
        mh.datasets.digits(seed=0), n_workers=n_workers, store=store, run_name="any",
        executor=mh.LocalExecutor(replicas=1, threads_per_worker=1), run_dir=tmp_path / "run",
    )  # fmt: skip
    assert SQLStore(store).get_experiment("any").spec["train_order"] == "any"
    assert all(m.status is mh.MSTStatus.COMPLETED for m in result.msts)
    assert result.best.history[-1]["val_accuracy"] > 0.8
    steps = SQLStore(store).list_steps("any")
    for mst in result.msts:
        for epoch in range(epochs):
            train = [s for s in steps if (s.mst_id, s.epoch, s.kind) == (mst.id, epoch, "train")]
            assert sorted(s.shard for s in train) == list(range(n_workers))
            assert sorted(s.position for s in train) == list(range(n_workers))
