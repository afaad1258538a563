"""Keras 3 under MOP against Keras's own model.fit, one model after another, end to end.

    python bench/keras_grid.py [--smoke-test] [--out DIR]

Fashion-MNIST (50,000 training images, 10,000 for validation; float in [0, 1]),
4 MLPs 784-256-10 (learning rate x L2) x 3 epochs, Keras 3 on the torch
backend, one thread per process. MOP: ``GridSearch.fit`` with
``mh.KerasEstimator`` on 2 workers, the whole call (sharding and start-up
included). Baseline: the same 4 models trained one after another in this
process with ``model.fit`` (shuffled, same batch size) and evaluated on the
validation set each epoch, divided by the 2 workers. Ratio = (baseline / 2) /
MOP; target >= 0.93. Writes bench/results/keras_grid.json and .md
(``--smoke-test``: keras_grid_smoke.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import modelhopper as mh  # noqa: E402

RESULTS = Path(__file__).parent / "results"
N_WORKERS, BATCH = 2, 128


def build(p: dict) -> keras.Model:
    l2 = keras.regularizers.L2(p["l2"])
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(256, activation="relu", kernel_regularizer=l2),
        keras.layers.Dense(10, kernel_regularizer=l2),
    ])  # fmt: skip
    model.compile(optimizer=keras.optimizers.Adam(p["lr"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])  # fmt: skip
    return model


def make_estimator(p):
    return mh.KerasEstimator(build(p), batch_size=BATCH)


LRS, L2S = [1e-3, 3e-4], [1e-5, 1e-4]
SPACE = {"lr": mh.grid(LRS), "l2": mh.grid(L2S)}
GRID = [{"lr": lr, "l2": l2} for lr in LRS for l2 in L2S]


def data(smoke: bool) -> mh.Dataset:
    full = mh.datasets.fashion_mnist(flatten=True)
    if not smoke:
        return full
    return mh.Dataset.from_numpy(full.train.x[:4000], full.train.y[:4000],
                                 full.validation.x[:1000], full.validation.y[:1000])  # fmt: skip


def side_by_side(smoke: bool, epochs: int) -> float:
    """Seconds of the same model.fit trainings split over 2 processes running at once (the
    slower half's trainings): what 2 plain workers achieve on this machine."""
    command = [sys.executable, __file__, "--plain-half", "0", "--epochs", str(epochs)]
    command += ["--smoke-test"] if smoke else []
    halves = [subprocess.Popen([*command[:3], str(k), *command[4:]], stdout=subprocess.PIPE,
                               text=True) for k in (0, 1)]  # fmt: skip
    outputs = [half.communicate()[0] for half in halves]
    if any(half.returncode != 0 for half in halves):
        sys.exit("keras_grid: a side-by-side half failed")
    return max(float(out.split()[-1]) for out in outputs)  # their trainings overlap


def sequential(
    dataset: mh.Dataset, epochs: int, models: slice = slice(None)
) -> tuple[float, list[float]]:
    """Seconds and final validation accuracies of model.fit, one model after another."""
    torch.set_num_threads(1)
    x, y, vx, vy = dataset.train.x, dataset.train.y, dataset.validation.x, dataset.validation.y
    accuracies = []
    started = time.perf_counter()
    for seed, p in list(enumerate(GRID))[models]:
        keras.utils.set_random_seed(seed)
        model = build(p)
        history = model.fit(x, y, batch_size=BATCH, epochs=epochs, validation_data=(vx, vy),
                            shuffle=True, verbose=0)  # fmt: skip
        accuracies.append(float(history.history["val_accuracy"][-1]))
    return time.perf_counter() - started, accuracies


def measure(smoke: bool) -> dict:
    epochs = 1 if smoke else 3
    dataset = data(smoke)
    with tempfile.TemporaryDirectory() as tmp:
        search = mh.GridSearch(make_estimator, SPACE, epochs=epochs, seed=0)
        started = time.perf_counter()
        result = search.fit(dataset, n_workers=N_WORKERS, run_dir=Path(tmp) / "run",
                            store=f"sqlite:///{tmp}/runs.db", progress=False)  # fmt: skip
        fit_seconds = time.perf_counter() - started
    plain_seconds, plain_accuracy = sequential(dataset, epochs)
    pair_seconds = side_by_side(smoke, epochs)
    mop_accuracy = [m.history[-1]["val_accuracy"] for m in result.msts]
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores; keras {keras.__version__} "
        f"({keras.backend.backend()}), torch {torch.__version__}",
        "smoke": smoke,
        "epochs": epochs,
        "n_train": len(dataset.train),
        "fit_seconds": round(fit_seconds, 2),
        "plain_seconds": round(plain_seconds, 2),
        "ratio": (plain_seconds / N_WORKERS) / fit_seconds,
        "side_by_side_seconds": round(pair_seconds, 2),
        "ratio_to_side_by_side": pair_seconds / fit_seconds,
        "startup_seconds": round(result.stats.startup_seconds, 2),
        "mean_val_accuracy_plain": float(np.mean(plain_accuracy)),
        "mean_val_accuracy_mop": float(np.mean(mop_accuracy)),
    }


def markdown(r: dict) -> str:
    met = "**met**" if r["ratio"] >= 0.93 else "**missed**"
    return "\n".join([
        "# Keras 3 under MOP against model.fit one after another",
        "",
        f"Machine: {r['machine']}. One run of `python bench/keras_grid.py`"
        + (" --smoke-test" if r["smoke"] else "") + ".",
        "",
        f"4 MLPs 784-256-10 (lr x L2) x {r['epochs']} epochs on {r['n_train']} Fashion-MNIST "
        "images, batch 128, one thread per process.",
        "",
        "| model.fit one after another s | limit (/ 2 workers) s | MOP fit s | ratio (target) "
        "| start-up s | mean val acc fit / MOP |",
        "|---|---|---|---|---|---|",
        f"| {r['plain_seconds']} | {r['plain_seconds'] / 2:.2f} | {r['fit_seconds']} "
        f"| {r['ratio']:.3f} (>= 0.93: {met}) | {r['startup_seconds']} "
        f"| {r['mean_val_accuracy_plain']:.4f} / {r['mean_val_accuracy_mop']:.4f} |",
        "",
        f"The same model.fit trainings split over 2 processes running side by side take "
        f"{r['side_by_side_seconds']} s ({r['plain_seconds'] / 2 / r['side_by_side_seconds']:.3f}"
        f" of the ideal halving): what two processes achieve side by side on this machine "
        f"at that moment. Against that, MOP's ratio is {r['ratio_to_side_by_side']:.3f}.",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plain-half", type=int, help=argparse.SUPPRESS)  # side_by_side's
    parser.add_argument("--epochs", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_half is not None:
        seconds, _ = sequential(data(args.smoke_test), args.epochs, slice(args.plain_half, None, 2))
        print(seconds)  # the trainings alone: both halves load first, then train at once
        return
    args.out.mkdir(parents=True, exist_ok=True)
    report = measure(args.smoke_test)
    stem = "keras_grid_smoke" if args.smoke_test else "keras_grid"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
