"""Population-based training on digits: weak members are replaced by perturbed clones of
strong ones, each clone starting from its parent's weights (recorded as parent MSTs).

    python examples/pbt_digits.py [--smoke-test]
"""

from __future__ import annotations

import argparse

from quickstart import make_estimator

import modelhopper as mh

SPACE = {
    "hidden": 64,
    "lr": mh.loguniform(1e-4, 1e-1),
    "l2": mh.choice([0.0, 1e-5, 1e-4]),
    "batch_size": 32,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    args = parser.parse_args()
    population, epochs = (3, 2) if args.smoke_test else (8, 8)
    search = mh.PBT(make_estimator, SPACE, population_size=population, epochs=epochs,
                    interval=1 if args.smoke_test else 2, quantile=0.34, mutable=["lr", "l2"],
                    metric="val_accuracy", direction="maximize", seed=0)  # fmt: skip
    result = search.fit(mh.datasets.digits(), n_workers=2, progress=not args.smoke_test)
    frame = result.to_dataframe()
    print(frame[["mst_id", "status", "epochs", "param_lr", "val_accuracy"]].to_string())
    print("best:", result.best.params, result.best.metrics)


if __name__ == "__main__":
    main()
