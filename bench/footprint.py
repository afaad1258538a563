"""Data footprint at cluster scale: Ray Tune's copy per node against MOP's one copy in total.

    python bench/footprint.py            # Fashion-MNIST, ~3 minutes on 2 cores
    python bench/footprint.py --smoke-test

A real multi-node Ray cluster on loopback: a head with no CPUs and N worker
nodes of 1 CPU each, every node its own raylet and object store. The same N
MSTs (an MLP, lr grid, 1 epoch) run twice:

- task parallelism as Ray Tune users run it: ``tune.with_parameters`` puts the
  dataset in the object store once; each trial's node pulls its own copy;
- MOP with RayExecutor, data shipped to nodes (nothing shared between nodes):
  each node receives and keeps only its shard.

While each runs, a thread samples every node's object-store bytes in use
(the raylet's own statistics) and keeps the peak per node; for MOP it also
reports the shard bytes each node's worker holds (its memory-mapped shard).
Writes bench/results/footprint.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

import modelhopper as mh

RESULTS = Path(__file__).parent / "results"
LRS = [1e-3, 3e-3, 1e-2]


def make_estimator(p):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=128,
    )


class NodeSampler(threading.Thread):
    """Peak object-store bytes in use on each node, sampled from the raylets' statistics."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.peak: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.period)

    def sample(self) -> None:
        import ray
        from ray._private import internal_api

        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            stats = internal_api.node_stats(node["NodeManagerAddress"], node["NodeManagerPort"])
            used = int(stats.store_stats.object_store_bytes_used)
            node_id = node["NodeID"]
            self.peak[node_id] = max(self.peak.get(node_id, 0), used)

    def stop(self) -> dict[str, int]:
        self._halt.set()
        self.join()
        self.sample()
        return self.peak


def _tune_trial(config: dict, data=None) -> None:
    """One Ray Tune trial: the whole training set, one MST, one epoch."""
    from ray import tune

    torch.set_num_threads(1)
    x, y, vx, vy = data
    torch.manual_seed(config["seed"])
    estimator = make_estimator(config)
    generator = torch.Generator().manual_seed(config["seed"])
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), estimator.batch_size):
        index = order[start : start + estimator.batch_size].numpy()
        estimator.optimizer.zero_grad()
        loss = estimator.loss(
            estimator.model(torch.from_numpy(x[index])), torch.from_numpy(y[index])
        )
        loss.backward()
        estimator.optimizer.step()
    with torch.no_grad():
        predicted = estimator.model(torch.tensor(vx)).argmax(1).numpy()  # a writable copy
    held = sum(a.nbytes for a in data)
    tune.report({"val_accuracy": float((predicted == vy).mean()), "data_bytes_held": held,
                 "node": __import__("ray").get_runtime_context().get_node_id()})  # fmt: skip


def run_tune(data: mh.Dataset, storage: str) -> dict:
    import ray
    from ray import tune

    arrays = (data.train.x, data.train.y, data.validation.x, data.validation.y)
    sampler = NodeSampler()
    sampler.start()
    started = time.perf_counter()
    trainable = tune.with_resources(tune.with_parameters(_tune_trial, data=arrays), {"cpu": 1})
    space = {"lr": tune.grid_search(LRS), "seed": 0}
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=len(LRS)),
        run_config=tune.RunConfig(storage_path=storage, name="footprint", verbose=0),
    )
    results = tuner.fit()
    wall = time.perf_counter() - started
    peak = sampler.stop()
    held: dict[str, int] = {}  # trials on one node share its copy (zero-copy reads)
    for r in results:
        held[r.metrics["node"]] = max(held.get(r.metrics["node"], 0), r.metrics["data_bytes_held"])
    return {
        "system": "Ray Tune (task parallelism)",
        "wall_seconds": round(wall, 2),
        "object_store_peak_bytes_per_node": peak,
        "worker_nodes_used": len(held),
        "data_bytes_per_node": held,
        "dataset_bytes": int(sum(a.nbytes for a in arrays)),
        "data_bytes_per_trial": [int(r.metrics["data_bytes_held"]) for r in results],
        "best_val_accuracy": round(max(r.metrics["val_accuracy"] for r in results), 4),
        "ray_version": ray.__version__,
    }


def run_mop(data: mh.Dataset, run_dir: str) -> dict:
    executor = mh.RayExecutor(data="ship", resources_per_worker={"CPU": 1})
    search = mh.GridSearch(make_estimator, {"lr": mh.grid(LRS)}, epochs=1, seed=0)
    sampler = NodeSampler()
    sampler.start()
    started = time.perf_counter()
    result = search.fit(data, n_workers=len(LRS), executor=executor, run_dir=run_dir)
    wall = time.perf_counter() - started
    peak = sampler.stop()
    return {
        "system": "modelhopper MOP (RayExecutor, shards shipped)",
        "wall_seconds": round(wall, 2),
        "object_store_peak_bytes_per_node": peak,
        "data_bytes_per_node": executor.shard_bytes_per_node(),
        "shipped_bytes": executor.shipped_bytes,
        "worker_nodes_used": len(set(executor.worker_nodes)),
        "dataset_bytes": result.stats.dataset_bytes,
        "hop_bytes": result.stats.hop_bytes,
        "best_val_accuracy": round(result.best.metrics["val_accuracy"], 4),
    }


def _per_node_rows(row: dict, head: str, workers: list[str]) -> list[tuple[str, int, int]]:
    """(node label, object-store peak, shard bytes held) for the head and each worker node."""
    peak = row["object_store_peak_bytes_per_node"]
    shards = row["data_bytes_per_node"]
    labels = [(head, "head")] + [(n, f"node {i + 1}") for i, n in enumerate(workers)]
    return [(label, peak.get(n, 0), shards.get(n, 0)) for n, label in labels]


def _markdown(rows: list[dict], meta: dict) -> str:
    mb = 1e6
    lines = [
        "# Data footprint on a loopback Ray cluster: Ray Tune vs MOP",
        "",
        f"Machine: {meta['machine']}; ray {meta['ray']}; {meta['date']}; head (0 CPUs) + "
        f"{meta['n_worker_nodes']} worker nodes x 1 CPU, each its own raylet and object store; "
        f"{len(LRS)} MSTs (MLP 784-128-10, lr grid), 1 epoch; dataset "
        f"{meta['dataset_bytes'] / mb:.1f} MB ({meta['n_train']} train / {meta['n_val']} val).",
        "",
        "| system | node | object store peak MB (all objects) | dataset MB held on the node |",
        "|---|---|---|---|",
    ]
    for row in rows:
        for label, peak, shard in row["per_node"]:
            lines.append(f"| {row['system']} | {label} | {peak / mb:.1f} | {shard / mb:.1f} |")
    lines += [
        "",
        "| system | wall s | dataset MB held on worker nodes | copies of the dataset "
        "| object store peak MB on worker nodes (all objects) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        peaks = sum(p for _, p, _ in row["per_node"][1:])
        lines.append(
            f"| {row['system']} | {row['wall_seconds']} | {row['worker_node_bytes'] / mb:.1f} | "
            f"{row['worker_node_bytes'] / meta['dataset_bytes']:.2f} | {peaks / mb:.1f} |"
        )
    lines += [
        "",
        "Object-store bytes are the raylets' own statistics, sampled every 0.2 s (peak kept). "
        "Ray Tune: `tune.with_parameters` stores the dataset once on the driver's node (the "
        "head); every trial's node pulls a whole copy into its object store. MOP: each worker "
        "node receives its shard once (shipped through the object store, then written to the "
        "node's disk and memory-mapped), and afterwards only model state passes through the "
        "object stores. 'Dataset MB held': Ray Tune, the bytes of the arrays each node's "
        "trials read (measured in the trials; trials on one node share one copy); MOP, the "
        "shard each node's worker holds. MOP's object-store peak on a worker node is the "
        "shipped shard in transit (freed once written to the node's disk) and model states; "
        "each system ran on a fresh cluster.",
    ]
    return "\n".join(lines) + "\n"


def _dataset(smoke: bool) -> mh.Dataset:
    full = mh.datasets.fashion_mnist(seed=0)
    if not smoke:
        return full
    return mh.Dataset.from_numpy(full.train.x[:3000], full.train.y[:3000],
                                 full.validation.x[:600], full.validation.y[:600])  # fmt: skip


@contextlib.contextmanager
def _cluster(n_worker_nodes: int, store_mb: int) -> Iterator[tuple[str, list[str]]]:
    """A loopback Ray cluster: head (0 CPUs) + 1-CPU worker nodes; yields their node ids."""
    import ray
    from ray.cluster_utils import Cluster

    memory = store_mb * 2**20
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": memory}
    )
    try:
        workers = [
            cluster.add_node(num_cpus=1, object_store_memory=memory).node_id
            for _ in range(n_worker_nodes)
        ]
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        yield cluster.head_node.node_id, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny size, for CI")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    data = _dataset(args.smoke_test)
    store_mb = 600 if not args.smoke_test else 100
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (("tune", run_tune), ("mop", run_mop)):
            # A fresh cluster each: objects one system leaves cached would count for the other.
            with _cluster(len(LRS), store_mb) as (head, workers):
                row = run(data, str(Path(tmp) / name))
                row["per_node"] = _per_node_rows(row, head, workers)
                row["worker_node_bytes"] = sum(row["data_bytes_per_node"].values())
                rows.append(row)
    meta = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "ray": ray.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "n_worker_nodes": len(LRS),
        "n_train": len(data.train),
        "n_val": len(data.validation),
        "dataset_bytes": int(data.train.nbytes + data.validation.nbytes),
        "smoke_test": args.smoke_test,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke_test else ""
    (args.out / f"footprint{suffix}.json").write_text(
        json.dumps({"meta": meta, "results": rows}, indent=2)
    )
    (args.out / f"footprint{suffix}.md").write_text(_markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
