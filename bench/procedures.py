"""ASHA and Hyperband on MOP vs synchronous successive halving vs grid, on Fashion-MNIST.

    python bench/procedures.py [--smoke-test]

Same candidates for every procedure (ASHA's j-th MST is random search's j-th
point), 2 workers. For each procedure: wall time, worker utilisation (measured
step seconds / (wall x workers)), the best validation accuracy reached, and
the wall time at which an MST first reached the target accuracy (99% of the
best accuracy any procedure reached). Writes bench/results/procedures.json/.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import modelhopper as mh
from modelhopper.store import EventKind, open_store

RESULTS = Path(__file__).parent / "results"
SPACE = {
    "hidden": mh.choice([64, 128, 256]),
    "lr": mh.loguniform(1e-4, 3e-2),
    "batch_size": mh.choice([64, 128]),
}


def make_estimator(p):
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10)
    )
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=p["batch_size"],
    )


def procedures(n_msts: int, max_epochs: int) -> dict[str, mh.BaseProcedure]:
    common = {"metric": "val_accuracy", "direction": "maximize", "seed": 0}
    halving = {"min_epochs": 1, "max_epochs": max_epochs, "reduction_factor": 3, "n_msts": n_msts}
    return {
        "ASHA (MOP, no barrier)": mh.ASHA(make_estimator, SPACE, **halving, **common),
        "Hyperband (async, MOP)": mh.Hyperband(make_estimator, SPACE, **halving, **common),
        "SuccessiveHalving (barrier)": mh.SuccessiveHalving(
            make_estimator, SPACE, **halving, **common
        ),
        "Random search, full budget": mh.RandomSearch(
            make_estimator, SPACE, n_msts=n_msts, epochs=max_epochs, **common
        ),
    }


def run(name: str, procedure: mh.BaseProcedure, data: mh.Dataset, folder: Path) -> dict:
    url = f"sqlite:///{folder}/db.sqlite"
    run_name = f"bench-{len(list(folder.glob('run-*')))}"
    result = procedure.fit(data, n_workers=2, run_name=run_name, store=url,
                           run_dir=folder / f"run-{run_name}")  # fmt: skip
    store = open_store(url)
    started = next(e.time for e in store.list_events(run_name) if e.kind is EventKind.STARTED)
    curve = sorted(
        ((e.finished_at - started).total_seconds(), e.metrics["val_accuracy"])
        for e in store.list_epochs(run_name)
    )
    s = result.stats
    return {
        "procedure": name,
        "n_msts": len(result.msts),
        "epochs_trained": sum(m.epochs_done for m in result.msts),
        "wall_seconds": round(s.wall_seconds, 2),
        "utilisation": round(s.efficiency, 3),
        "best_val_accuracy": round(max(a for _, a in curve), 4),
        "curve": [(round(t, 2), round(a, 4)) for t, a in curve],
    }


def _time_to(curve: list, target: float) -> float | None:
    return next((t for t, a in curve if a >= target), None)


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Procedures on MOP (Fashion-MNIST MLPs, 2 workers)",
        "",
        f"{meta['n_train']} training / {meta['n_val']} validation examples; {meta['n_msts']} "
        f"candidate MSTs, max {meta['max_epochs']} epochs, reduction factor 3; target = 99% "
        f"of the best accuracy any procedure reached ({meta['target']:.4f}).",
        "",
        "| procedure | MSTs | epochs trained | wall s | time to target s | utilisation "
        "| best val acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reached = r["time_to_target_seconds"]
        lines.append(
            f"| {r['procedure']} | {r['n_msts']} | {r['epochs_trained']} | {r['wall_seconds']} "
            f"| {reached if reached is not None else 'not reached'} | {r['utilisation']} "
            f"| {r['best_val_accuracy']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny size, for CI")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    full = mh.datasets.fashion_mnist(seed=0)
    n_train, n_val, n_msts, max_epochs = (
        (2000, 500, 4, 3) if args.smoke_test else (20000, 5000, 27, 9)
    )
    data = mh.Dataset.from_numpy(full.train.x[:n_train], full.train.y[:n_train],
                                 full.validation.x[:n_val], full.validation.y[:n_val])  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, procedure in procedures(n_msts, max_epochs).items():
            rows.append(run(name, procedure, data, Path(tmp)))
            print(f"{name}: wall {rows[-1]['wall_seconds']} s", flush=True)
    target = 0.99 * max(r["best_val_accuracy"] for r in rows)
    for r in rows:
        r["time_to_target_seconds"] = _time_to(r["curve"], target)
    meta = {
        "n_train": n_train, "n_val": n_val, "n_msts": n_msts, "max_epochs": max_epochs,
        "target": target, "date": time.strftime("%Y-%m-%d"), "smoke_test": args.smoke_test,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke_test else ""
    (args.out / f"procedures{suffix}.json").write_text(
        json.dumps({"meta": meta, "results": rows}, indent=2)
    )
    (args.out / f"procedures{suffix}.md").write_text(_markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
