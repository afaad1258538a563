"""MOP on Ray next to MOP on local processes: same workload, same figures.

    python bench/ray_efficiency.py            # ~10 minutes on 2 cores
    python bench/ray_efficiency.py --smoke-test

The workloads of bench/mop_efficiency.py (8 MSTs of a small CNN and of an MLP
on Fashion-MNIST, 2 workers) run three ways: LocalExecutor; RayExecutor on
one Ray node; RayExecutor on a 2-node Ray cluster on loopback (a head with no
CPUs plus two 1-CPU nodes, each its own raylet and object store, so every hop
crosses nodes through the object store). Reports wall, efficiency, hop bytes,
and the shard bytes each node holds. Writes bench/results/ray_efficiency.json/.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from mop_efficiency import cnn, mlp, run_workload

import modelhopper as mh

RESULTS = Path(__file__).parent / "results"


def _local(name, factory, data, epochs) -> dict:
    row = run_workload(name, factory, data, epochs, 2, executor=mh.LocalExecutor(replicas=1))
    return {**row, "setup": "LocalExecutor", "n_nodes": 1,
            "shard_bytes_per_node": [sum(row["resident_shard_bytes"])]}  # fmt: skip


def _on_ray(setup: str, name, factory, data, epochs) -> dict:
    executor = mh.RayExecutor(resources_per_worker={"CPU": 1})
    row = run_workload(name, factory, data, epochs, 2, executor=executor)
    per_node = executor.shard_bytes_per_node()
    return {**row, "setup": setup, "n_nodes": len(per_node),
            "shard_bytes_per_node": sorted(per_node.values())}  # fmt: skip


def _single_node(workloads) -> list[dict]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        return [_on_ray("RayExecutor, 1 node", *w) for w in workloads]
    finally:
        ray.shutdown()


def _two_nodes(workloads) -> list[dict]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        return [_on_ray("RayExecutor, 2 nodes (loopback)", *w) for w in workloads]
    finally:
        ray.shutdown()
        cluster.shutdown()


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# MOP on Ray next to local processes (Fashion-MNIST, 8 MSTs, 2 workers)",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; ray {meta['ray']}; {meta['date']}; "
        f"train/val examples {meta['n_train']}/{meta['n_val']}; epochs {meta['epochs']}.",
        "",
        "| workload | executor | nodes | wall s | ideal s | efficiency | hops | hop MB "
        "| shard MB per node | data copies | best val acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_node = " / ".join(f"{b / 1e6:.1f}" for b in r["shard_bytes_per_node"])
        lines.append(
            f"| {r['workload']} | {r['setup']} | {r['n_nodes']} | {r['wall_seconds']} | "
            f"{r['ideal_seconds']} | {r['efficiency']} | {r['n_hops']} | "
            f"{r['hop_bytes'] / 1e6:.1f} | {per_node} | {r['data_copies']} | "
            f"{r['best_val_accuracy']} |"
        )
    lines += [
        "",
        "efficiency = (sum of measured step seconds / workers) / wall, as in mop_efficiency.md. "
        "On 2 nodes each worker's shard lives on its own node and every hop moves the state "
        "from one node's object store to the other's; the driver fetches each state once more "
        "to write its checkpoint. Compare efficiencies, not walls, across rows: the step "
        "seconds themselves vary with whatever else the machine runs (ideal s).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny size, for CI")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    full = mh.datasets.fashion_mnist(seed=0)
    if args.smoke_test:
        data = mh.Dataset.from_numpy(
            full.train.x[:2000], full.train.y[:2000], full.validation.x[:1000],
            full.validation.y[:1000],
        )  # fmt: skip
        workloads = [("MLP 784-256-10", mlp, data, 1)]
    else:
        data = full
        workloads = [("small CNN", cnn, data, 1), ("MLP 784-256-10", mlp, data, 2)]
    rows = [_local(*w) for w in workloads] + _single_node(workloads) + _two_nodes(workloads)
    rows.sort(key=lambda r: r["workload"], reverse=True)
    import ray

    meta = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "torch": torch.__version__,
        "ray": ray.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "n_train": len(data.train),
        "n_val": len(data.validation),
        "epochs": {w[0]: w[3] for w in workloads},
        "smoke_test": args.smoke_test,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke_test else ""
    (args.out / f"ray_efficiency{suffix}.json").write_text(
        json.dumps({"meta": meta, "results": rows}, indent=2)
    )
    (args.out / f"ray_efficiency{suffix}.md").write_text(_markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
