"""The core guarantee with representations: MOP over materialised features equals plain
sequential PyTorch applying the transform to every batch, bit for bit.

The representation here is per-example and elementwise (standardise, then append
squares), so materialising it in chunks and applying it per batch give the same
bits; for representations with matmuls see tests/test_transfer.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.data._sharding import shard_splits
from modelhopper.estimator import derive_seed, state_from_bytes

N_WORKERS = 2
EPOCHS = 2
SEED = 5


def polynomial(x: torch.Tensor, *, centre: float, degree: int) -> torch.Tensor:
    z = (x - centre) * 2.0
    return torch.cat([z**k for k in range(1, degree + 1)], dim=1)


def representation(p) -> mh.Representation:
    return mh.Representation(
        "polynomial", polynomial, params={"centre": p["centre"], "degree": p["degree"]}
    )


def make_estimator(p):
    model = nn.Sequential(
        nn.Linear(64 * p["degree"], 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 10)
    )
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        batch_size=32,
        representation=representation(p),
    )


# Two MSTs share each (centre, degree) representation: one materialised copy per shard.
SPACE = {"centre": mh.grid([0.5]), "degree": mh.grid([1, 2]), "lr": mh.grid([1e-2, 3e-3])}


@pytest.fixture(scope="module")
def digits():
    return mh.datasets.digits(seed=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def mop_result(digits, run_dir):
    # No memory budget: features go to the disk tier and are read memory-mapped.
    search = mh.GridSearch(make_estimator, SPACE, epochs=EPOCHS, metric="val_accuracy", seed=SEED)
    return search.fit(
        digits,
        n_workers=N_WORKERS,
        run_dir=run_dir,
        store=f"sqlite:///{run_dir}/modelhopper.db",  # module scope: not in the repo's cwd
        keep_shards=True,
        # One copy: every step on a shard runs on its owner, the worker that keeps the
        # shard's features on disk (a replica's stay in memory), whatever the timing.
        executor=mh.LocalExecutor(
            threads_per_worker=1, materialise=mh.MaterialiseBudget(memory_bytes=0), replicas=1
        ),
    )


def _sequential(mst, digits, history):
    """Plain PyTorch in one process: the transform runs on every batch it is given."""
    torch.set_num_threads(1)
    shards = shard_splits(digits, N_WORKERS, seed=SEED)
    torch.manual_seed(mst.seed)
    est = make_estimator(mst.params)
    p = mst.params

    def transform(x):
        return polynomial(torch.from_numpy(x), centre=p["centre"], degree=p["degree"])

    for row in history:
        est.model.train()
        for shard in row["train_order"]:
            train, _ = shards[shard]
            g = torch.Generator().manual_seed(derive_seed(mst.seed, row["epoch"], shard))
            order = torch.randperm(len(train), generator=g)
            for start in range(0, len(train), est.batch_size):
                idx = order[start : start + est.batch_size].numpy()
                est.optimizer.zero_grad()
                est.loss(
                    est.model(transform(train.x[idx])), torch.from_numpy(train.y[idx])
                ).backward()
                est.optimizer.step()
    return est


@pytest.mark.slow
def test_mop_with_a_representation_equals_sequential_training_bit_for_bit(mop_result, digits):
    assert len(mop_result.msts) == 4
    for record in mop_result.msts:
        assert record.status is mh.MSTStatus.COMPLETED, record
        mst = mh.MST(record.id, record.params, record.seed)
        reference = _sequential(mst, digits, record.history)
        state = state_from_bytes(record.checkpoint.read_bytes())
        for name, tensor in reference.model.state_dict().items():
            assert torch.equal(state["model"][name], tensor), (record.id, name)
        for key, value in reference.optimizer.state_dict()["state"].items():
            for name in value:
                assert torch.equal(state["optimizer"]["state"][key][name], value[name])


@pytest.mark.slow
def test_each_shard_holds_one_materialised_copy_per_representation(mop_result, run_dir):
    for shard in range(N_WORKERS):
        files = sorted((run_dir / "shards" / f"shard-{shard}" / "features").glob("*.npy"))
        assert len(files) == 2 * 2  # (train, val) x the two degrees, shared by two lrs each
