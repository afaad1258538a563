"""What recording costs: driver seconds per step for checkpoints + store, and row counts.

    python bench/store_overhead.py [--smoke-test] [--postgres URL]

Runs a 100-MST random search on digits (2 workers, 2 epochs) with the default
SQLite store (and on PostgreSQL when a URL is given), and reports the driver
time spent checkpointing and writing the store per step, the store's row
counts, and the sizes of the database and the checkpoint folder.
Writes bench/results/store_overhead.json and .md.
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
from modelhopper.store import open_store

RESULTS = Path(__file__).parent / "results"


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=p["batch_size"],
    )


SPACE = {
    "hidden": mh.choice([16, 32, 64]),
    "lr": mh.loguniform(1e-3, 3e-2),
    "batch_size": mh.choice([32, 64]),
}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def measure(store_url: str | None, folder: Path, n_msts: int, epochs: int, label: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    url = store_url or f"sqlite:///{folder}/modelhopper.db"
    search = mh.RandomSearch(make_estimator, SPACE, n_msts=n_msts, epochs=epochs, seed=0)
    name = f"overhead-{label}-{int(time.time())}"
    result = search.fit(
        mh.datasets.digits(), n_workers=2, run_name=name, store=url, run_dir=folder / "run"
    )
    stats = result.stats
    counts = open_store(url).row_counts(name)
    return {
        "store": label,
        "n_msts": n_msts,
        "epochs": epochs,
        "n_steps": stats.n_steps,
        "n_visits": stats.n_visits,
        "record_ms_per_step": round(1000 * stats.record_seconds_per_step, 3),
        "record_ms_per_visit": round(1000 * stats.record_seconds / stats.n_visits, 3),
        "record_share_of_wall": round(stats.record_seconds / stats.wall_seconds, 4),
        "wall_seconds": round(stats.wall_seconds, 2),
        "row_counts": counts,
        "db_bytes": _size(folder / "modelhopper.db") if store_url is None else None,
        "checkpoint_bytes": _size(folder / "run" / "checkpoints"),
    }


def _markdown(rows: list[dict]) -> str:
    lines = [
        "# Store overhead (digits, 2 workers, LocalExecutor)",
        "",
        "Driver time per step = checkpoint write + one store transaction + pruning, "
        "measured around each visit's recording (it overlaps with the other workers' "
        "training, so it costs wall time only when it delays the next dispatch).",
        "",
        "| store | MSTs | epochs | steps | ms / step | ms / visit | share of wall "
        "| rows: msts / steps / epochs / events | checkpoints MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["row_counts"]
        lines.append(
            f"| {r['store']} | {r['n_msts']} | {r['epochs']} | {r['n_steps']} | "
            f"{r['record_ms_per_step']} | {r['record_ms_per_visit']} | "
            f"{r['record_share_of_wall']} | {c['msts']} / {c['steps']} / {c['epochs']} / "
            f"{c['events']} | {r['checkpoint_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="10 MSTs, 1 epoch")
    parser.add_argument("--postgres", help="also measure on this PostgreSQL URL")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    n_msts, epochs = (10, 1) if args.smoke_test else (100, 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure(None, Path(tmp) / "sqlite", n_msts, epochs, "sqlite"))
        if args.postgres:
            rows.append(measure(args.postgres, Path(tmp) / "pg", n_msts, epochs, "postgresql"))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke_test else ""
    (args.out / f"store_overhead{suffix}.json").write_text(json.dumps(rows, indent=2))
    (args.out / f"store_overhead{suffix}.md").write_text(_markdown(rows))
    print(_markdown(rows))


if __name__ == "__main__":
    main()
