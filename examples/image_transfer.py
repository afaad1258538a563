"""Transfer learning as model selection on Fashion-MNIST, with a CNN modelhopper pretrains.

    python examples/image_transfer.py [--smoke-test]

1. Pretrain: a small CNN on classes 0-4 (T-shirt, trouser, pullover, dress, coat),
   selected by MOP grid search over the learning rate.
2. Transfer: classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) with only a few
   labels per class. The MSTs compare heads on frozen features from block 1, 2
   or 3 of the pretrained CNN, fine-tuning its top block, fine-tuning all of it,
   and the same CNN trained from scratch. Frozen blocks are materialised once per
   shard and shared by every MST that cuts the network at the same place.

Needs the Debian package dataset-fashion-mnist (or the IDX files in $MODELHOPPER_DATA).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

import modelhopper as mh
from modelhopper.transfer import Flatten, PretrainedTrunk

WIDTHS = {1: 16 * 14 * 14, 2: 32 * 7 * 7, 3: 128}  # output size of each block
# MST choices: (layer the head reads, first fine-tuned block; None = all frozen), or scratch.
CUTS = {
    "frozen@1": (1, None),
    "frozen@2": (2, None),
    "frozen@3": (3, None),
    "finetune-top": (3, 2),
    "finetune-all": (3, 0),
    "scratch": (3, 0),
}


def cnn_blocks() -> list[nn.Module]:
    return [
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.2)),
    ]


def subset(split: mh.Split, classes: range, per_class: int | None, offset: int = 0):
    """Examples of ``classes`` (relabelled from 0), at most ``per_class`` of each."""
    keep = []
    for label in classes:
        index = np.flatnonzero(np.asarray(split.y) == label)
        keep.append(index if per_class is None else index[:per_class])
    index = np.sort(np.concatenate(keep))
    return np.asarray(split.x[index]), np.asarray(split.y[index]) - offset


# ------------------------------------------------------------------ 1. pretraining


def make_pretrain_estimator(p):
    model = nn.Sequential(*cnn_blocks(), nn.Linear(128, 5))
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        batch_size=64,
    )


def pretrain(
    data: mh.Dataset, n_per_class: int, epochs: int, lrs: list[float], path: Path
) -> float:
    """Select and train the seed CNN on classes 0-4; save its blocks' weights to ``path``."""
    x, y = subset(data.train, range(5), n_per_class)
    vx, vy = subset(data.validation, range(5), n_per_class // 4)
    search = mh.GridSearch(
        make_pretrain_estimator,
        {"lr": mh.grid(lrs)},
        epochs=epochs,
        metric="val_accuracy",
        direction="maximize",
        seed=0,
    )
    result = search.fit(mh.Dataset.from_numpy(x, y, vx, vy), n_workers=2)
    model = result.best.load_model()
    torch.save(nn.Sequential(*model[:3]).state_dict(), path)
    return result.best.metrics["val_accuracy"]


# ------------------------------------------------------------------ 2. transfer


def transfer_factory(weights: Path):
    def load() -> list[nn.Module]:  # the user's loading code: build, then load weights
        blocks = nn.Sequential(*cnn_blocks())
        blocks.load_state_dict(torch.load(weights, weights_only=True))
        return list(blocks)

    trunk = PretrainedTrunk(load, name="fmnist-cnn-0to4", readouts={"flatten": Flatten()})
    scratch = PretrainedTrunk(cnn_blocks, name="fmnist-cnn-untrained")

    def make_estimator(p):
        layer, trainable_from = CUTS[p["cut"]]
        seed_model = scratch if p["cut"] == "scratch" else trunk
        return seed_model.estimator(
            layer=layer,
            trainable_from=trainable_from,
            readout="flatten" if trainable_from is None else None,
            head=nn.Linear(WIDTHS[layer], 5),
            optimizer=lambda params: torch.optim.Adam(params, lr=p["lr"]),
            loss=nn.CrossEntropyLoss(),
            batch_size=32,
        )

    return make_estimator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    parser.add_argument("--labels-per-class", type=int, default=50)
    args = parser.parse_args()
    smoke = args.smoke_test
    data = mh.datasets.fashion_mnist(seed=0)
    workdir = Path("modelhopper-runs")  # next to the runs' store, in the current directory
    workdir.mkdir(exist_ok=True)
    weights = workdir / "image-transfer-cnn-classes-0-4.pt"
    if smoke:
        accuracy = pretrain(data, 100, 1, [3e-3], weights)
    else:
        accuracy = pretrain(data, 4000, 4, [1e-3, 3e-3], weights)
    print(f"pretrained on classes 0-4: val_accuracy {accuracy:.3f} ({weights})")

    per_class = 10 if smoke else args.labels_per_class
    x, y = subset(data.train, range(5, 10), per_class, offset=5)
    vx, vy = subset(data.validation, range(5, 10), 40 if smoke else 400, offset=5)
    few = mh.Dataset.from_numpy(x, y, vx, vy)
    cuts = ["frozen@2", "finetune-all"] if smoke else list(CUTS)
    space = {"cut": mh.grid(cuts), "lr": mh.grid([1e-3] if smoke else [1e-3, 3e-3])}
    search = mh.GridSearch(
        transfer_factory(weights),
        space,
        epochs=1 if smoke else 15,
        metric="val_accuracy",
        direction="maximize",
        seed=0,
    )
    result = search.fit(few, n_workers=2, progress=not smoke)
    table = result.to_dataframe()
    print(f"\ntransfer to classes 5-9 with {per_class} labels per class:")
    print(table[["mst_id", "param_cut", "param_lr", "status", "val_accuracy"]].to_string())
    best = result.best
    print("best MST:", best.params, f"val_accuracy {best.metrics['val_accuracy']:.3f}")


if __name__ == "__main__":
    main()
