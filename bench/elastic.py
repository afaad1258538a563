"""Workers joining and leaving a running run, on real training (LocalExecutor).

    python bench/elastic.py [--smoke-test] [--out DIR]

The same grid of MLPs (784-256-10) on Fashion-MNIST (50,000 train / 10,000
validation), cut into 4 logical shards, with one copy of the data
(``replicas=1``) and one thread per worker (so that every run computes in the
same float order: a worker with 2 threads sums in another), runs four ways, one
after another in this process: on a fixed pool of 1 worker, on a fixed pool of
2, starting on 1 worker with a second one added once the first epoch of any MST
is recorded, starting on 2 with worker 0 removed at the same point, and on 2
workers of which worker 1 runs 3x slower (``modelhopper.testing.Throttle``:
SIGSTOP 20 ms of every 30 ms), without and with ``rebalance=True`` (shards in
proportion to measured speeds).
Reported per run: wall time of ``start`` to ``wait``, when the change was
applied, visits, the shards each worker owned at the end, and the largest
difference of any epoch's validation accuracy from the fixed pool of 2 (the plan
does not depend on the workers, so it must be 0). Results: bench/results/elastic.{json,md}
(``--smoke-test``: digits, no fixed pool of 1, the pool changed as soon as the
run is recorded, elastic_smoke.*).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import modelhopper as mh
from modelhopper.store import EventKind, SQLStore
from modelhopper.testing import Throttle

RESULTS = Path(__file__).parent / "results"
N_SHARDS = 4
LAYOUTS = ("fixed-1", "fixed-2", "add", "remove", "slow", "slow-rebalance")


def mlp(p: dict[str, Any]) -> mh.Estimator:
    model = nn.Sequential(nn.Linear(p["inputs"], 256), nn.ReLU(), nn.Linear(256, 10))
    return mh.Estimator(
        model=model, loss=nn.CrossEntropyLoss(), batch_size=p["batch_size"],
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]), metrics=["accuracy"],
    )  # fmt: skip


def _data(smoke: bool) -> mh.Dataset:
    if smoke:
        return mh.datasets.digits()
    return mh.datasets.fashion_mnist(n_train=50_000, flatten=True)


def _search(smoke: bool) -> mh.GridSearch:
    space = {
        "lr": mh.grid([1e-3] if smoke else [1e-3, 3e-4]), "batch_size": mh.grid([64, 256]),
        "inputs": 64 if smoke else 784,
    }  # fmt: skip
    return mh.GridSearch(
        mlp, space, epochs=2 if smoke else 3, metric="val_accuracy", direction="maximize", seed=0
    )


def _epoch_recorded(store: SQLStore, name: str, timeout: float = 600) -> None:
    """Block until any MST's first epoch is in the store (the moment the pool changes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if store.list_epochs(name):
                return
        except mh.StoreError:
            pass  # the run is not recorded yet
        time.sleep(0.02)
    raise RuntimeError(f"run {name} recorded no epoch within {timeout} s")


def run_layout(layout: str, data: mh.Dataset, smoke: bool, folder: Path) -> dict[str, Any]:
    """One run: ``fixed-1``, ``fixed-2``, ``add`` (1 -> 2), ``remove`` (2 -> 1), or
    ``slow`` / ``slow-rebalance`` (2 workers, worker 1 throttled 3x)."""
    url = f"sqlite:///{folder}/runs.db"
    start_workers = 1 if layout in ("fixed-1", "add") else 2
    executor = mh.LocalExecutor(
        replicas=1, threads_per_worker=1, rebalance=layout == "slow-rebalance"
    )
    throttle = Throttle(lambda: executor.pids[1] if len(executor.pids) > 1 else None)
    if layout.startswith("slow"):
        throttle.start()
    started = time.perf_counter()
    handle = _search(smoke).start(
        data, n_workers=start_workers, n_shards=N_SHARDS, run_name=layout, store=url,
        run_dir=folder / layout, executor=executor,
    )  # fmt: skip
    changed_at = None
    if layout in ("add", "remove"):
        store = SQLStore(url)
        if not smoke:  # the smoke size's run may end before its first epoch is read back:
            _epoch_recorded(store, layout)  # it changes the pool as soon as it is recorded
        if layout == "add":
            handle.add_workers(1)
        else:
            handle.remove_worker(0)
        changed_at = time.perf_counter() - started
        store.close()
    result = handle.wait()
    wall = time.perf_counter() - started
    if throttle.is_alive():
        throttle.stop()
    store = SQLStore(url)
    events = [e.detail for e in store.list_events(layout) if e.kind is EventKind.WORKERS_CHANGED]
    store.close()
    changes = [e["workers"] for e in events]
    owned = events[-1]["homes"] if events else {}
    accuracy = {(row["mst_id"], row["epoch"]): row["val_accuracy"]
                for row in result.history().to_dict("records")}  # fmt: skip
    return {
        "layout": layout, "start_workers": start_workers, "wall_seconds": round(wall, 2),
        "changed_at_seconds": None if changed_at is None else round(changed_at, 2),
        "pools": changes, "causes": [e["cause"] for e in events], "n_visits": result.stats.n_visits,
        "shards_owned": {w: len(s) for w, s in owned.items()},
        "compute_seconds": round(result.stats.compute_seconds, 2),
        "best_val_accuracy": result.best.history[-1]["val_accuracy"], "accuracy": accuracy,
    }  # fmt: skip


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Elastic pools: workers joining and leaving a running run",
        "",
        f"{meta['machine']}, torch {meta['torch']}; {meta['workload']}; {N_SHARDS} logical "
        "shards, one copy of the data, one thread per worker (`LocalExecutor(replicas=1, "
        "threads_per_worker=1)`); add / remove: the pool changes once "
        "the first epoch of any MST is recorded; slow: worker 1 stopped 20 ms of every 30 "
        "(3x slower; `modelhopper.testing.Throttle`), slow-rebalance: with "
        f"`rebalance=True`. `python bench/elastic.py`, {meta['date']}.",
        "",
        "| run | wall s | change applied at s | pools after changes (cause) | shards owned at "
        "the end | visits | largest val accuracy difference vs fixed 2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        changed = "" if r["changed_at_seconds"] is None else f"{r['changed_at_seconds']:.1f}"
        pools = ", ".join(f"{p} ({c})" for p, c in zip(r["pools"], r["causes"], strict=True))
        owned = " / ".join(f"{n}" for _, n in sorted(r["shards_owned"].items()))
        lines.append(
            f"| {r['layout']} | {r['wall_seconds']:.1f} | {changed} | {pools} | {owned} | "
            f"{r['n_visits']} | {r['max_accuracy_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = _data(args.smoke_test)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        layouts = ("fixed-2", "add", "remove") if args.smoke_test else LAYOUTS
        for layout in layouts:
            rows.append(run_layout(layout, data, args.smoke_test, Path(folder)))
            print(f"{layout:8s} {rows[-1]['wall_seconds']:6.1f} s", flush=True)
    compare_accuracy(rows, next(r["accuracy"] for r in rows if r["layout"] == "fixed-2"))
    meta = {
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "workload": ("2 MLPs 64-256-10 (batch {64, 256}) x 2 epochs on digits"
                     if args.smoke_test else "4 MLPs 784-256-10 (lr {1e-3, 3e-4} x batch "
                     "{64, 256}) x 3 epochs on Fashion-MNIST 50k / 10k"),
        "smoke": args.smoke_test,
    }  # fmt: skip
    stem = "elastic_smoke" if args.smoke_test else "elastic"
    write_results(args.out, stem, meta, rows, _markdown(rows, meta))


def compare_accuracy(rows: list[dict[str, Any]], reference: dict[Any, float]) -> None:
    """Replace each row's accuracies by their largest difference from ``reference``'s."""
    for r in rows:
        r["max_accuracy_difference"] = max(
            abs(a - reference[key]) for key, a in r.pop("accuracy").items()
        )


def write_results(
    out: Path, stem: str, meta: dict[str, Any], rows: list[dict[str, Any]], markdown: str
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
