"""Human in the loop: start a search in the background, then stop, clone and add MSTs
while it runs (the same commands work from another shell: `modelhopper stop RUN MST`).

    python examples/steer_a_run.py [--smoke-test]
"""

from __future__ import annotations

import argparse

from quickstart import SPACE, make_estimator

import modelhopper as mh


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    args = parser.parse_args()
    epochs = 6 if args.smoke_test else 10  # enough work left for the commands below
    search = mh.RandomSearch(make_estimator, SPACE, n_msts=4, epochs=epochs,
                             metric="val_accuracy", direction="maximize", seed=0)  # fmt: skip
    run = search.start(mh.datasets.digits(), n_workers=2)
    print(f"run {run.name} started; MSTs so far:\n{run.status().to_string()}")
    run.stop(3)
    print("stopped MST 3")
    clone = run.clone(0, {"lr": 1e-3}, warm_start=True)
    print(f"cloned MST 0 with lr=1e-3 as MST {clone}")
    added = run.add({"hidden": 128, "lr": 3e-3, "l2": 0.0, "batch_size": 32}, epochs=epochs)
    print(f"added MST {added}")
    result = run.wait()
    print(result.to_dataframe()[["mst_id", "status", "epochs", "val_accuracy"]].to_string())


if __name__ == "__main__":
    main()
