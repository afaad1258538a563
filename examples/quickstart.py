"""Random search over MLPs on scikit-learn's digits with MOP on 2 workers.

python examples/quickstart.py [--smoke-test]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import modelhopper as mh


def make_estimator(p):
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10)
    )
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["l2"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=p["batch_size"],
    )


SPACE = {
    "hidden": mh.choice([32, 128]),
    "lr": mh.loguniform(1e-4, 1e-1),
    "l2": mh.choice([0.0, 1e-4]),
    "batch_size": 32,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    args = parser.parse_args()
    n_msts, epochs = (2, 1) if args.smoke_test else (8, 5)
    search = mh.RandomSearch(make_estimator, SPACE, n_msts=n_msts, epochs=epochs,
                             metric="val_accuracy", direction="maximize", seed=0)  # fmt: skip
    result = search.fit(mh.datasets.digits(), n_workers=2, progress=not args.smoke_test)
    print(result.to_dataframe().to_string())
    print("best:", result.best.params, result.best.metrics)
    model = result.best.load_model()
    test = mh.datasets.digits().test
    accuracy = (model(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).mean()
    print(f"test accuracy of the best MST: {accuracy:.3f}")


if __name__ == "__main__":
    main()
