"""Is the dashboard responsive on a big run? Response times on 5,000 MSTs x 20 epochs.

    python bench/dashboard.py [--smoke-test] [--n-msts 5000] [--epochs 20] [--store URL]

Writes a synthetic run straight into a SQLite store (bulk inserts; what the
driver would have recorded: MSTs, 100,000 epoch rows, 400,000 steps, 300,000
events: one per visit and one per epoch), then times each API endpoint and the run page through the
ASGI app in process (FastAPI's TestClient: routing, queries, validation and JSON
included, no network): the first request (cold: the reader's cache is built),
the median of the next ones (warm), and a refresh after the run grew by 100
epochs (what a live page does every 2 s). Writes bench/results/dashboard.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert, select

import modelhopper as mh
from modelhopper.server import create_app
from modelhopper.store import EventKind, ExperimentRecord, MSTRecord, RunStatus, SQLStore
from modelhopper.store._schema import EpochRow, EventRow, ExperimentRow, StepRow

RESULTS = Path(__file__).parent / "results"
RUN = "big"
N_WORKERS = 2
SPACE = {
    "hidden": mh.choice([32, 64, 128, 256]),
    "lr": mh.loguniform(1e-4, 1e-1),
    "l2": mh.choice([0.0, 1e-4, 1e-3]),
    "batch_size": mh.choice([32, 64, 128]),
}


def _fill(store: SQLStore, n_msts: int, n_epochs: int, seed: int = 0) -> dict[str, int]:
    """A run as the driver records it, written in bulk: returns the row counts."""
    space = mh.Space(SPACE)
    rng = np.random.default_rng(seed)
    store.create_experiment(
        ExperimentRecord(
            name=RUN, status=RunStatus.RUNNING, procedure="RandomSearch",
            spec={"metric": "val_accuracy", "direction": "maximize", "epochs": n_epochs},
            space=space.to_dict(), seed=seed, n_workers=N_WORKERS, run_dir="/tmp/big",
        )
    )  # fmt: skip
    msts = [
        MSTRecord(mst_id=i, params=space.sample(rng), seed=i, status="running", n_epochs=n_epochs)
        for i in range(n_msts)
    ]
    store.add_msts(RUN, msts)
    store.add_event(RUN, EventKind.STARTED, detail={"shard_bytes": [40_000_000] * N_WORKERS})
    with store._write.begin() as session:
        experiment = session.scalar(select(ExperimentRow.id).where(ExperimentRow.name == RUN))
        _insert_epochs(session, experiment, n_msts, range(n_epochs), rng)
    return store.row_counts(RUN)


def _insert_epochs(session: Any, experiment: int, n_msts: int, epochs: range, rng: Any) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=30 * epochs.start)
    steps, rows, events = [], [], []
    clock = start
    rate = rng.uniform(0.05, 0.4, size=n_msts)
    for epoch in epochs:
        for mst in range(n_msts):
            for shard in range(N_WORKERS):  # one visit per shard: train on it, then evaluate
                worker = (shard + mst + epoch) % N_WORKERS
                clock += timedelta(milliseconds=3)
                for kind in ("train", "eval"):
                    steps.append({
                        "experiment_id": experiment, "mst_id": mst, "epoch": epoch, "kind": kind,
                        "shard": shard, "position": shard, "worker": worker, "n": 500,
                        "loss_sum": 100.0, "metric_sums": {"accuracy": 400.0}, "seconds": 0.003,
                        "finished_at": clock,
                    })  # fmt: skip
                events.append({
                    "experiment_id": experiment, "time": clock, "kind": EventKind.HOPPED.value,
                    "mst_id": mst, "worker": None,
                    "detail": {"worker": worker, "steps": 2, "hop": shard > 0, "bytes": 50_000},
                })  # fmt: skip
            events.append({
                "experiment_id": experiment, "time": clock, "kind": EventKind.EPOCH_END.value,
                "mst_id": mst, "worker": None, "detail": {"epoch": epoch},
            })  # fmt: skip
            accuracy = 1.0 - 0.9 * math.exp(-rate[mst] * (epoch + 1))
            rows.append({
                "experiment_id": experiment, "mst_id": mst, "epoch": epoch,
                "metrics": {"train_loss": 1 - accuracy, "val_loss": 1.1 - accuracy,
                            "train_accuracy": accuracy + 0.01, "val_accuracy": accuracy},
                "train_order": [0, 1], "eval_order": [0, 1], "train_seconds": 0.006,
                "eval_seconds": 0.006, "finished_at": clock,
            })  # fmt: skip
    for table, values in ((StepRow, steps), (EpochRow, rows), (EventRow, events)):
        for i in range(0, len(values), 20_000):
            session.execute(insert(table), values[i : i + 20_000])


REQUESTS = [
    ("runs list (API)", "/api/runs"),
    ("run settings", f"/api/runs/{RUN}"),
    ("MST table page, sorted by best", f"/api/runs/{RUN}/msts?sort=best&order=desc&limit=25"),
    ("MST table, filter + param sort", f"/api/runs/{RUN}/msts?q=hidden=64&sort=param:lr&limit=25"),
    ("learning curves, best 50", f"/api/runs/{RUN}/curves?top=50&max_points=300"),
    ("learning curves, best 200, val_loss", f"/api/runs/{RUN}/curves?top=200&metric=val_loss"),
    ("per-epoch history page", f"/api/runs/{RUN}/epochs?offset=50000&limit=200"),
    ("events, newest 100, no visits", f"/api/runs/{RUN}/events?newest=true&skip_visits=true"),
    ("timeline, last 1,000 visits (the page)", f"/api/runs/{RUN}/timeline?last=1000"),
    ("timeline, last 5,000 visits (a report)", f"/api/runs/{RUN}/timeline?last=5000"),
    ("resource totals", f"/api/runs/{RUN}/resources"),
    ("run page (HTML)", f"/runs/{RUN}"),
]


def _time(client: Any, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"GET {path} gave {response.status_code}: {response.text[:300]}")
    return elapsed, len(response.content)


def measure(store: SQLStore, repeats: int) -> tuple[list[dict[str, Any]], int]:
    from fastapi.testclient import TestClient

    rows = []
    with TestClient(create_app(store, token="bench")) as client:
        for label, path in REQUESTS:
            cold, size = _time(client, path)
            warm = statistics.median(_time(client, path)[0] for _ in range(repeats))
            rows.append({"request": label, "path": path, "cold_ms": 1000 * cold,
                         "warm_ms": 1000 * warm, "bytes": size})  # fmt: skip
        grown = _grow(store, min(100, store.row_counts(RUN)["msts"]))
        for row in rows:
            row["after_growth_ms"] = 1000 * _time(client, row["path"])[0]
    return rows, grown


def _grow(store: SQLStore, n: int) -> int:
    """``n`` more epochs finish, as in a live run between two refreshes."""
    with store._write.begin() as session:
        experiment = session.scalar(select(ExperimentRow.id).where(ExperimentRow.name == RUN))
        last = session.scalar(select(EpochRow.epoch).order_by(EpochRow.epoch.desc()).limit(1))
        _insert_epochs(session, experiment, n, range(last + 1, last + 2), np.random.default_rng(1))
    return n


def _markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Dashboard response times on a big run",
        "",
        f"`python bench/dashboard.py` on {meta['machine']}: one run with {meta['n_msts']:,} MSTs "
        f"x {meta['n_epochs']} epochs in a SQLite store ({meta['rows']['epochs']:,} epoch rows, "
        f"{meta['rows']['steps']:,} steps, {meta['rows']['events']:,} events; "
        f"{meta['db_mb']:.0f} MB). Each request goes "
        "through the ASGI app in process (FastAPI TestClient: routing, SQL, validation, JSON; "
        "no network). *cold*: the first request after the dashboard starts (it builds its "
        "per-run cache); *warm*: median of the next "
        f"{meta['repeats']}; *after growth*: the next request after {meta['grown']} more "
        "epochs were recorded, as a live page's 2-second refresh sees them.",
        "",
        "| request | cold ms | warm ms | after growth ms | response KB |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['request']} (`{row['path']}`) | {row['cold_ms']:.0f} | {row['warm_ms']:.0f} "
            f"| {row['after_growth_ms']:.0f} | {row['bytes'] / 1000:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="50 MSTs x 4 epochs")
    parser.add_argument("--n-msts", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path, help="keep the filled store here (reused if it exists)")
    args = parser.parse_args()
    n_msts, n_epochs = (50, 4) if args.smoke_test else (args.n_msts, args.epochs)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.db"
        if args.db is not None and args.db.exists():  # a copy: measuring grows the run
            shutil.copy(args.db, path)
        elif args.db is not None:  # fill it, keep it, measure a copy
            with SQLStore(path=args.db) as store:
                _fill(store, n_msts, n_epochs)
            shutil.copy(args.db, path)
        started = time.perf_counter()
        with SQLStore(path=path) as store:
            reused = any(r.name == RUN for r in store.list_experiments())
            counts = store.row_counts(RUN) if reused else _fill(store, n_msts, n_epochs)
        fill = time.perf_counter() - started
        with SQLStore(path=path) as store:
            rows, grown = measure(store, args.repeats)
        meta = {
            "n_msts": n_msts, "n_epochs": n_epochs, "rows": counts, "fill_seconds": fill,
            "db_mb": path.stat().st_size / 1e6, "repeats": args.repeats, "grown": grown,
            "machine": f"{platform.machine()}, {platform.python_version()}, 2 shared cores",
        }  # fmt: skip
    report = _markdown(meta, rows)
    print(report)
    if not args.smoke_test:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "dashboard.json").write_text(json.dumps({**meta, "requests": rows}, indent=2))
        (RESULTS / "dashboard.md").write_text(report)


if __name__ == "__main__":
    main()
