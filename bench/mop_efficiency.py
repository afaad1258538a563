"""MOP efficiency on Fashion-MNIST: how close a run comes to the compute limit.

    python bench/mop_efficiency.py            # full size (several minutes on 2 cores)
    python bench/mop_efficiency.py --smoke-test

For each workload (a small CNN, a 784-256-10 MLP): 8 MSTs (lr x batch size x
L2), 2 epochs, 2 workers. Reports wall time, the ideal time (sum of measured
step compute seconds / workers), efficiency = ideal / wall, hops and hop
bytes, and resident shard bytes summed over workers against the dataset size.
Writes bench/results/mop_efficiency.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import modelhopper as mh

RESULTS = Path(__file__).parent / "results"
SPACE = {
    "lr": mh.grid([1e-3, 3e-3]),
    "batch_size": mh.grid([64, 128]),
    "l2": mh.grid([0.0, 1e-4]),
}


def cnn(p):
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    return _estimator(model, p)


def mlp(p):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    return _estimator(model, p)


def _estimator(model: nn.Module, p: dict) -> mh.Estimator:
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["l2"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=p["batch_size"],
    )


def run_workload(
    name: str, factory, data: mh.Dataset, epochs: int, n_workers: int, executor=None
) -> dict:
    search = mh.GridSearch(
        factory, SPACE, epochs=epochs, metric="val_accuracy", direction="maximize", seed=0
    )
    with tempfile.TemporaryDirectory() as run_dir:
        # One copy of the data, whatever its size (the smoke size would be replicated).
        executor = executor if executor is not None else mh.LocalExecutor(replicas=1)
        result = search.fit(data, n_workers=n_workers, run_dir=run_dir, executor=executor)
    s = result.stats
    return {
        "workload": name,
        "n_msts": len(result.msts),
        "epochs": epochs,
        "n_workers": n_workers,
        "wall_seconds": round(s.wall_seconds, 2),
        "total_seconds_with_startup": round(s.total_seconds, 2),
        "compute_seconds": round(s.compute_seconds, 2),
        "ideal_seconds": round(s.ideal_seconds, 2),
        "efficiency": round(s.efficiency, 3),
        "lower_bound_seconds": round(s.lower_bound_seconds, 2),
        "wall_over_lower_bound": round(s.wall_seconds / s.lower_bound_seconds, 3),
        "n_visits": s.n_visits,
        "n_hops": s.n_hops,
        "hop_bytes": s.hop_bytes,
        "resident_shard_bytes": list(s.resident_shard_bytes),
        "dataset_bytes": s.dataset_bytes,
        "data_copies": round(s.data_copies, 3),
        "best_val_accuracy": round(result.best.metrics["val_accuracy"], 4),
    }


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# MOP efficiency (Fashion-MNIST, 8 MSTs, LocalExecutor)",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}; "
        f"train/val examples {meta['n_train']}/{meta['n_val']}.",
        "",
        "| workload | wall s | ideal s | efficiency | wall / lower bound | hops | hop MB "
        "| resident shard MB (sum) | data copies | best val acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['wall_seconds']} | {r['ideal_seconds']} | "
            f"{r['efficiency']} | {r['wall_over_lower_bound']} | {r['n_hops']} | "
            f"{r['hop_bytes'] / 1e6:.1f} | {sum(r['resident_shard_bytes']) / 1e6:.1f} | "
            f"{r['data_copies']} | {r['best_val_accuracy']} |"
        )
    lines += [
        "",
        "efficiency = (sum of measured train + eval step seconds / workers) / wall; "
        "wall runs from the first visit dispatched to the last result "
        "(worker start-up and sharding are in `total_seconds_with_startup`).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny size, for CI")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.smoke_test:
        data = mh.datasets.fashion_mnist(seed=0, n_train=58_000)
        data = mh.Dataset.from_numpy(
            data.train.x[:2000], data.train.y[:2000], data.validation.x, data.validation.y
        )
        epochs = 1
    else:
        data, epochs = mh.datasets.fashion_mnist(seed=0), args.epochs
    rows = [
        run_workload("small CNN", cnn, data, epochs, args.workers),
        run_workload("MLP 784-256-10", mlp, data, epochs, args.workers),
    ]
    meta = {
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "n_train": len(data.train),
        "n_val": len(data.validation),
        "smoke_test": args.smoke_test,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke_test else ""
    (args.out / f"mop_efficiency{suffix}.json").write_text(
        json.dumps({"meta": meta, "results": rows}, indent=2)
    )
    (args.out / f"mop_efficiency{suffix}.md").write_text(_markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
