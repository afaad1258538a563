"""Model-based search with Optuna's TPE (or any Optuna sampler) on MOP.

python examples/tpe_digits.py [--sampler tpe|cmaes|random] [--smoke-test]
"""

from __future__ import annotations

import argparse

import optuna
from quickstart import make_estimator

import modelhopper as mh

SPACE = {
    "hidden": mh.choice([32, 64, 128]),
    "lr": mh.loguniform(1e-4, 1e-1),
    "l2": mh.loguniform(1e-6, 1e-3),
    "batch_size": mh.choice([32, 64]),
}
SAMPLERS = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="tpe")
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    args = parser.parse_args()
    n_msts, epochs = (3, 1) if args.smoke_test else (24, 4)
    search = mh.OptunaSearch(make_estimator, SPACE, sampler=SAMPLERS[args.sampler],
                             n_msts=n_msts, epochs=epochs, metric="val_accuracy",
                             direction="maximize", seed=0)  # fmt: skip
    result = search.fit(mh.datasets.digits(), n_workers=2, progress=not args.smoke_test)
    print(result.to_dataframe().head(10).to_string())
    print("best:", result.best.params, result.best.metrics)


if __name__ == "__main__":
    main()
