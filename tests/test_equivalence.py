"""The core guarantee: training under MOP equals sequential training over the same shard order.

The oracle below is plain PyTorch written independently of the engine; it
shares only the documented contract: initial weights from ``torch.manual_seed
(mst.seed)``, each sub-epoch shuffled by ``derive_seed(mst.seed, epoch, shard)``,
a ``train_transform``'s draws seeded by ``derive_seed(mst.seed, epoch, shard,
batch, 1)`` with the MST's own RNG set aside, the lr scheduler stepped after each
epoch's last training shard, denormal floats flushed to zero.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.data._sharding import shard_splits
from modelhopper.estimator import denormals_flushed, derive_seed, state_from_bytes

N_WORKERS = 2
EPOCHS = 2


def augment(batch):
    """Random augmentation: each 8x8 digit flipped left-right or not, plus noise."""
    images = batch.reshape(-1, 8, 8)
    flip = torch.rand(len(images)) < 0.5
    images = torch.where(flip[:, None, None], images.flip(-1), images)
    return (images + 0.3 * torch.randn_like(images)).reshape(batch.shape)


def make_estimator(p):
    # Dropout draws from the global RNG, so the RNG state must hop with the model.
    model = nn.Sequential(
        nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Dropout(0.2), nn.Linear(p["hidden"], 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=1e-4)
    return mh.Estimator(
        model=model,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=p["batch_size"],
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
        train_transform=augment if p.get("augment") else None,
    )


SPACE = {"hidden": mh.grid([16, 48]), "lr": mh.grid([1e-2, 3e-3]), "batch_size": mh.choice([32]),
         "augment": mh.grid([False, True])}  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return mh.datasets.digits(seed=0)


@pytest.fixture(scope="module")
def mop_result(digits, tmp_path_factory):
    search = mh.GridSearch(
        make_estimator, SPACE, epochs=EPOCHS, metric="val_accuracy", direction="maximize", seed=11
    )
    return search.fit(
        digits,
        n_workers=N_WORKERS,
        run_dir=tmp_path_factory.mktemp("run"),
        executor=mh.LocalExecutor(threads_per_worker=1, replicas=1),  # one copy: MOP itself
    )


def _sequential(mst, digits, history):
    """Plain PyTorch, one process, same shards in the order MOP recorded."""
    torch.set_num_threads(1)
    shards = shard_splits(digits, N_WORKERS, seed=11)
    torch.manual_seed(mst.seed)
    est = make_estimator(mst.params)
    val_accuracy = []
    for row in history:
        epoch = row["epoch"]
        est.model.train()
        for shard in row["train_order"]:
            train, _ = shards[shard]
            g = torch.Generator().manual_seed(derive_seed(mst.seed, epoch, shard))
            order = torch.randperm(len(train), generator=g)
            for batch, start in enumerate(range(0, len(train), est.batch_size)):
                idx = order[start : start + est.batch_size].numpy()
                x, y = torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx])
                if est.train_transform is not None:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(derive_seed(mst.seed, epoch, shard, batch, 1))
                        x = est.train_transform(x)
                est.optimizer.zero_grad()
                est.loss(est.model(x), y).backward()
                est.optimizer.step()
        est.lr_scheduler.step()
        est.model.eval()
        with torch.no_grad():
            correct = sum(
                int((est.model(torch.from_numpy(v.x)).argmax(1) == torch.from_numpy(v.y)).sum())
                for _, v in shards
            )
        val_accuracy.append(correct / len(digits.validation))
    return est, val_accuracy


def test_mop_equals_sequential_training_bit_for_bit(mop_result, digits):
    assert len(mop_result.msts) == 8  # half of them with random augmentation
    for record in mop_result.msts:
        assert record.status is mh.MSTStatus.COMPLETED
        mst = mh.MST(record.id, record.params, record.seed)
        with denormals_flushed():  # as in the workers
            reference, val_accuracy = _sequential(mst, digits, record.history)
        state = state_from_bytes(record.checkpoint.read_bytes())
        for name, tensor in reference.model.state_dict().items():
            assert torch.equal(state["model"][name], tensor), (record.id, name)
        ref_opt = reference.optimizer.state_dict()
        for key, value in ref_opt["state"].items():
            for name in value:
                assert torch.equal(state["optimizer"]["state"][key][name], value[name])
        assert state["optimizer"]["param_groups"][0]["lr"] == ref_opt["param_groups"][0]["lr"]
        assert [row["val_accuracy"] for row in record.history] == pytest.approx(
            val_accuracy, abs=1e-12
        )
        model = record.load_model()
        for name, tensor in reference.model.state_dict().items():
            assert torch.equal(model.state_dict()[name], tensor)


def test_each_epoch_visits_every_shard_once(mop_result):
    history = mop_result.history()
    assert len(history) == 8 * EPOCHS
    for orders in (history["train_order"], history["eval_order"]):
        assert all(sorted(order) == list(range(N_WORKERS)) for order in orders)


def test_one_copy_of_the_data_across_workers(mop_result, digits):
    stats = mop_result.stats
    assert len(stats.resident_shard_bytes) == N_WORKERS
    assert sum(stats.resident_shard_bytes) == digits.train.nbytes + digits.validation.nbytes
    assert stats.data_copies == 1.0
    assert stats.n_hops > 0 and stats.hop_bytes > 0


def test_workers_busy_time_lies_between_their_compute_and_their_time(mop_result):
    """Busy: compute plus each visit's fixed costs (state, model); the rest they waited."""
    s = mop_result.stats
    assert s.compute_seconds < s.busy_seconds <= s.n_workers * s.wall_seconds
    assert s.efficiency < s.busy_share <= 1.0


def _fingerprint(result):
    history = result.history().drop(columns=["train_seconds", "eval_seconds"])
    return [m.params for m in result.msts], history.to_dict("records")


def _random_search(digits, tmp_path, seed):
    space = {"hidden": mh.choice([16, 32]), "lr": mh.loguniform(1e-3, 1e-1), "batch_size": 64}
    search = mh.RandomSearch(make_estimator, space, n_msts=3, epochs=2, seed=seed)
    return search.fit(
        digits, n_workers=2, run_dir=tmp_path / f"seed{seed}-{len(list(tmp_path.iterdir()))}"
    )


def test_same_seed_reproduces_msts_orders_and_metrics(digits, tmp_path):
    first = _random_search(digits, tmp_path, seed=3)
    again = _random_search(digits, tmp_path, seed=3)
    other = _random_search(digits, tmp_path, seed=4)
    assert _fingerprint(first) == _fingerprint(again)
    assert _fingerprint(first)[0] != _fingerprint(other)[0]
    assert _fingerprint(first)[1] != _fingerprint(other)[1]


def test_one_mst_hopping_back_to_an_idle_worker_still_equals_sequential(digits, tmp_path):
    # With one MST the other worker idles, still holding the MST from its last visit:
    # that copy is stale once the MST trained elsewhere, so the state must hop again.
    space = {"hidden": mh.grid([16]), "lr": mh.grid([1e-2]), "batch_size": mh.choice([32])}
    search = mh.GridSearch(
        make_estimator, space, epochs=3, metric="val_accuracy", direction="maximize", seed=11
    )
    result = search.fit(digits, n_workers=N_WORKERS, run_dir=tmp_path, progress=False,
                        executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip
    (record,) = result.msts
    reference, _ = _sequential(
        mh.MST(record.id, record.params, record.seed), digits, record.history
    )
    state = state_from_bytes(record.checkpoint.read_bytes())
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(state["model"][name], tensor), name
