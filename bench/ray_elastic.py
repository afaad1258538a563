"""Nodes joining and leaving a loopback Ray cluster mid-run (RayExecutor(follow_cluster=True)).

    python bench/ray_elastic.py [--smoke-test] [--out DIR]

A Ray cluster on this machine: a head with no CPUs and two 1-CPU worker nodes,
each its own raylet and object store (``ray.cluster_utils.Cluster``). The grid
of bench/elastic.py (4 MLPs 784-256-10 on Fashion-MNIST 50,000 / 10,000, 4
logical shards, one copy of the data) runs twice, one after the other, with
``data="ship"`` (no node reads the driver's folder: shards reach the nodes as
copies, as on separate machines):

- ``fixed``: 2 workers on the 2 nodes, the pool never changes;
- ``join+leave``: ``follow_cluster=True``; once the first epoch of any MST is
  recorded a third 1-CPU node joins (the run gives it a worker, which takes its
  shards from the actors holding them), and once half of the epochs are
  recorded worker 0 is removed (``RunHandle.remove_worker``: it leaves once its
  visit ends, its shards copied to the others) and then its node.

Reported per run: wall time of ``fit``, when each change was made and when the
run had applied it, the pools, the shard bytes shipped by the driver and copied
actor to actor, visits (and those run again: crashed with the lost node), and
the largest difference of any epoch's validation accuracy from the fixed pool's
(the plan does not depend on the workers: it must be 0). Results:
bench/results/ray_elastic.{json,md} (``--smoke-test``: digits, 12 epochs,
ray_elastic_smoke.*).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import modelhopper as mh
from modelhopper.store import EventKind, SQLStore

sys.path.insert(0, str(Path(__file__).parent))
from elastic import (  # noqa: E402  (the grid of bench/elastic.py, and its results)
    N_SHARDS,
    _data,
    compare_accuracy,
    mlp,
    write_results,
)

RESULTS = Path(__file__).parent / "results"
STORE_MB = 400  # each node's object store: shards and states travel through it


def _search(smoke: bool) -> mh.GridSearch:
    space = {
        "lr": mh.grid([1e-3, 3e-4]), "batch_size": mh.grid([64, 256]),
        "inputs": 64 if smoke else 784,
    }  # fmt: skip
    return mh.GridSearch(
        mlp, space, epochs=12 if smoke else 6, metric="val_accuracy", direction="maximize", seed=0
    )


def _wait_until(handle: Any, what: str, ready: Callable[[], bool], timeout: float = 1800) -> None:
    """Block until ``ready()``; fail clearly if the run ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if handle.done:
            raise RuntimeError(f"the run ended before {what}: make it longer")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not {what} within {timeout} s")
        time.sleep(0.05)


def _join_then_leave(
    cluster: Any, handle: Any, executor: mh.RayExecutor, url: str, n_epochs: int, started: float
) -> dict[str, float]:
    """Add a node once the first epoch is recorded; once the joiner has trained and half
    of the epochs are recorded, drain worker 0 and remove its node (Ray starts and stops
    nodes from the main thread only). When each was done, from ``started``."""
    store = SQLStore(url)
    name, done = handle.name, {}

    def epochs() -> int:
        try:
            return len(store.list_epochs(name))
        except mh.StoreError:
            return 0  # the run is not recorded yet

    _wait_until(handle, "its first epoch", lambda: epochs() >= 1)
    cluster.add_node(num_cpus=1, object_store_memory=STORE_MB * 2**20)
    done["node_joined"] = time.perf_counter() - started
    _wait_until(
        handle, "the joiner trained and half of the epochs were recorded",
        lambda: epochs() >= n_epochs // 2 and any(s.worker == 2 for s in store.list_steps(name)),
    )  # fmt: skip
    # Drained first (as an autoscaler drains a node): worker 0 leaves once its visit ends,
    # its shards moved to the others, and only then does its node go.
    handle.remove_worker(0)
    _wait_until(handle, "worker 0 left", lambda: executor.resident_shard_bytes[0] == 0)
    node = next(n for n in cluster.worker_nodes if n.node_id == executor.worker_nodes[0])
    cluster.remove_node(node)
    done["node_left"] = time.perf_counter() - started
    store.close()
    return done


def run_layout(layout: str, cluster: Any, data: mh.Dataset, smoke: bool, folder: Path) -> dict:
    url = f"sqlite:///{folder}/runs.db"
    name = layout.replace("+", "-")
    search = _search(smoke)
    executor = mh.RayExecutor(data="ship", follow_cluster=layout != "fixed", start_timeout=600)
    started, epoch_started = time.perf_counter(), time.time()
    handle = search.start(data, n_workers=2, n_shards=N_SHARDS, executor=executor, store=url,
                          run_name=name, run_dir=folder / name)  # fmt: skip
    made = {}
    if layout != "fixed":
        n_epochs = len(search.space.grid_points()) * search.epochs
        made = _join_then_leave(cluster, handle, executor, url, n_epochs, started)
    result = handle.wait()
    wall = time.perf_counter() - started
    store = SQLStore(url)
    events = store.list_events(name)
    changes = [
        (e.detail["workers"], e.detail["cause"], round(e.time.timestamp() - epoch_started, 2))
        for e in events if e.kind is EventKind.WORKERS_CHANGED
    ]  # fmt: skip
    rerun = sum(e.kind is EventKind.WORKER_RESTARTED for e in events)
    steps = store.list_steps(name)
    store.close()
    accuracy = {(row["mst_id"], row["epoch"]): row["val_accuracy"]
                for row in result.history().to_dict("records")}  # fmt: skip
    return {
        "layout": layout, "wall_seconds": round(wall, 2),
        "made_at_seconds": {k: round(v, 2) for k, v in made.items()},
        "changes": changes, "workers_that_trained": sorted({s.worker for s in steps}),
        "shipped_mb": round(executor.shipped_bytes / 2**20, 1),
        "copied_mb": round(executor.copied_bytes / 2**20, 1),
        "restarts": executor.restarts, "n_visits": result.stats.n_visits, "visits_rerun": rerun,
        "best_val_accuracy": result.best.history[-1]["val_accuracy"], "accuracy": accuracy,
    }  # fmt: skip


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Nodes joining and leaving a Ray cluster mid-run",
        "",
        f"{meta['machine']}, torch {meta['torch']}, ray {meta['ray']}; {meta['workload']}; "
        f"{N_SHARDS} logical shards, one copy of the data; a loopback cluster (head with no "
        "CPUs, 1-CPU worker nodes, each its own raylet and object store), "
        "`RayExecutor(data='ship')`; join+leave: `follow_cluster=True`, a node added once the "
        "first epoch is recorded; once half are, worker 0 removed (drained) and then its "
        "node. "
        f"`python bench/ray_elastic.py`, {meta['date']}.",
        "",
        "| run | wall s | node joined / left at s | pools (cause, applied at s) | workers that "
        "trained | shipped MB | copied MB | visits (re-run) | largest val accuracy difference "
        "vs fixed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        made = r["made_at_seconds"]
        at = " / ".join(f"{made[k]:.1f}" for k in ("node_joined", "node_left") if k in made)
        pools = "; ".join(f"{w} ({cause}, {t:.1f})" for w, cause, t in r["changes"])
        lines.append(
            f"| {r['layout']} | {r['wall_seconds']:.1f} | {at} | {pools} | "
            f"{r['workers_that_trained']} | {r['shipped_mb']} | {r['copied_mb']} | "
            f"{r['n_visits']} ({r['visits_rerun']}) | {r['max_accuracy_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    data = _data(args.smoke_test)
    config = {"health_check_period_ms": 200, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": STORE_MB * 2**20, "_system_config": config,
    })  # fmt: skip
    rows = []
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=STORE_MB * 2**20)
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory() as folder:
            for layout in ("fixed", "join+leave"):
                rows.append(run_layout(layout, cluster, data, args.smoke_test, Path(folder)))
                print(f"{layout:10s} {rows[-1]['wall_seconds']:6.1f} s", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    compare_accuracy(rows, rows[0]["accuracy"])
    meta = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "torch": torch.__version__, "ray": ray.__version__, "date": time.strftime("%Y-%m-%d"),
        "workload": ("4 MLPs 64-256-10 (lr {1e-3, 3e-4} x batch {64, 256}) x 12 epochs on digits"
                     if args.smoke_test else "4 MLPs 784-256-10 (lr {1e-3, 3e-4} x batch "
                     "{64, 256}) x 6 epochs on Fashion-MNIST 50k / 10k"),
        "smoke": args.smoke_test,
    }  # fmt: skip
    stem = "ray_elastic_smoke" if args.smoke_test else "ray_elastic"
    write_results(args.out, stem, meta, rows, _markdown(rows, meta))


if __name__ == "__main__":
    main()
