"""MOP on an image folder, with per-image random augmentation, equals sequential training.

The images stay encoded in the shards and are decoded per batch on the workers,
in the training process or in DataLoader worker processes (``num_workers``).
The oracle reads the same PNG files with Pillow in one process and shares only
the documented contract: class labels are the sorted class folders' positions,
files are listed sorted, a streamed split's shard ``s`` holds the rows
``shard_indices(n, n_workers, seed, salt)[s]`` in file order, each sub-epoch is
shuffled by ``derive_seed(mst.seed, epoch, shard)`` and a transform's draws are
seeded by ``derive_seed(mst.seed, epoch, shard, batch, 1)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import modelhopper as mh
from modelhopper.data._sharding import shard_indices
from modelhopper.estimator import denormals_flushed, derive_seed, state_from_bytes

N_WORKERS = 2
EPOCHS = 2
SEED = 5


def crop_flip(image: torch.Tensor) -> torch.Tensor:
    """One uint8 (1, 28, 28) image: padded by 2, cropped back at random, maybe mirrored."""
    padded = nn.functional.pad(image, (2, 2, 2, 2))
    top, left = (int(v) for v in torch.randint(0, 5, (2,)))
    image = padded[:, top : top + 28, left : left + 28]
    return image.flip(-1) if torch.rand(()) < 0.5 else image


def to_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255


def make_estimator(p):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Dropout(0.1),
        nn.Linear(4 * 13 * 13, 10),
    )  # fmt: skip
    augment = mh.per_example(lambda x: crop_flip(x).float() / 255)
    return mh.Estimator(
        model,
        torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=0.9),
        nn.CrossEntropyLoss(),
        batch_size=32,
        train_transform=augment,
        eval_transform=to_float,
        num_workers=p["num_workers"],
    )


SPACE = {"lr": mh.grid([0.05, 0.01]), "num_workers": mh.grid([0, 2])}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    train = mh.datasets.fashion_mnist_folder(root / "train", limit=300)
    validation = mh.datasets.fashion_mnist_folder(root / "val", split="test", limit=80)
    return train, validation


@pytest.fixture(scope="module")
def mop_result(folders, tmp_path_factory):
    data = mh.Dataset.from_image_folder(*folders)
    search = mh.GridSearch(make_estimator, SPACE, epochs=EPOCHS, seed=SEED)
    return search.fit(
        data, n_workers=N_WORKERS, run_dir=tmp_path_factory.mktemp("run"),
        executor=mh.LocalExecutor(replicas=1),  # one copy, as for image data of any size
    )  # fmt: skip


def _read_folder(root) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder layout, sorted, decoded with Pillow: (x uint8, y)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            images.append(torch.from_numpy(np.array(Image.open(path)))[None])
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def _shards(x: torch.Tensor, y: torch.Tensor, salt: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    parts = shard_indices(len(y), N_WORKERS, SEED, salt=salt)
    return [(x[np.sort(rows)], y[np.sort(rows)]) for rows in parts]


def _sequential(mst, folders, history):
    torch.set_num_threads(1)
    train = _shards(*_read_folder(folders[0]), salt=0)
    validation = _shards(*_read_folder(folders[1]), salt=1)
    torch.manual_seed(mst.seed)
    est = make_estimator(mst.params)
    val_accuracy = []
    for row in history:
        epoch = row["epoch"]
        est.model.train()
        for shard in row["train_order"]:
            x_all, y_all = train[shard]
            order = torch.randperm(
                len(y_all),
                generator=torch.Generator().manual_seed(derive_seed(mst.seed, epoch, shard)),
            )
            for batch, start in enumerate(range(0, len(y_all), est.batch_size)):
                idx = order[start : start + est.batch_size]
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(mst.seed, epoch, shard, batch, 1))
                    x = torch.stack([crop_flip(image).float() / 255 for image in x_all[idx]])
                est.optimizer.zero_grad()
                est.loss(est.model(x), y_all[idx]).backward()
                est.optimizer.step()
        est.model.eval()
        with torch.no_grad():
            correct = sum(int((est.model(to_float(x)).argmax(1) == y).sum()) for x, y in validation)
        val_accuracy.append(correct / sum(len(y) for _, y in validation))
    return est, val_accuracy


def test_mop_on_an_image_folder_with_augmentation_equals_sequential_bit_for_bit(
    mop_result, folders
):
    assert len(mop_result.msts) == 4  # two with DataLoader worker processes
    for record in mop_result.msts:
        assert record.status is mh.MSTStatus.COMPLETED, record.error
        mst = mh.MST(record.id, record.params, record.seed)
        with denormals_flushed():  # as in the workers
            reference, val_accuracy = _sequential(mst, folders, record.history)
        state = state_from_bytes(record.checkpoint.read_bytes())
        for name, tensor in reference.model.state_dict().items():
            assert torch.equal(state["model"][name], tensor), (record.params, name)
        assert [row["val_accuracy"] for row in record.history] == pytest.approx(
            val_accuracy, abs=1e-12
        )


def test_shards_hold_the_images_encoded_once(mop_result, folders):
    files = sum(1 for p in folders[0].rglob("*.png")) + sum(1 for p in folders[1].rglob("*.png"))
    stored = sum(mop_result.stats.resident_shard_bytes)
    on_disk = sum(p.stat().st_size for f in folders for p in f.rglob("*.png"))
    assert files == 380
    # The files' bytes plus an int64 label each, not decoded arrays (28*28 bytes each).
    assert stored == on_disk + 8 * files
