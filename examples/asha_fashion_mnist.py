"""ASHA (and Hyperband) over small CNNs on Fashion-MNIST, on MOP with 2 workers.

    python examples/asha_fashion_mnist.py [--hyperband] [--smoke-test]

Needs the Debian package dataset-fashion-mnist (or the IDX files in $MODELHOPPER_DATA).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import modelhopper as mh


def make_estimator(p):
    c = p["channels"]
    model = nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * c * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["l2"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=p["batch_size"],
    )


SPACE = {
    "channels": mh.choice([8, 16]),
    "lr": mh.loguniform(3e-4, 3e-2),
    "l2": mh.choice([0.0, 1e-4]),
    "batch_size": mh.choice([64, 128]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hyperband", action="store_true", help="Hyperband instead of ASHA")
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    args = parser.parse_args()
    data = mh.datasets.fashion_mnist(seed=0)
    if args.smoke_test:  # 2,000 training and 1,000 validation examples
        data = mh.Dataset.from_numpy(
            data.train.x[:2000],
            data.train.y[:2000],
            data.validation.x[:1000],
            data.validation.y[:1000],
        )
    n_msts, max_epochs = (4, 2) if args.smoke_test else (16, 9)
    procedure = mh.Hyperband if args.hyperband else mh.ASHA
    search = procedure(make_estimator, SPACE, min_epochs=1, max_epochs=max_epochs,
                       reduction_factor=3, n_msts=n_msts, metric="val_accuracy",
                       direction="maximize", seed=0)  # fmt: skip
    result = search.fit(data, n_workers=2, progress=not args.smoke_test)
    print(result.to_dataframe()[["mst_id", "status", "epochs", "val_accuracy"]].to_string())
    print("best:", result.best.params, result.best.metrics)


if __name__ == "__main__":
    main()
