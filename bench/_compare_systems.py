"""The systems bench/compare.py runs on one workload, each a function ``run_<system>``.

Every system trains the same MSTs (the small CNN of bench/mop_efficiency.py,
built by ``modelhopper.estimator.build_estimator`` under the MST's seed, so every
system starts an MST from the same weights) with the same passes
(``train_pass`` / ``evaluate_pass``: the seconds they measure are the "pure
training seconds" of every system). Each function takes the workload ``cfg``
and the arrays ``(x_train, y_train, x_val, y_val)`` and returns a dict:
per-MST accuracy histories, compute seconds, data bytes resident per worker,
bytes communicated, and the peaks of processes that reported their own memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _compare_measure import free_port, max_rss_bytes
from mop_efficiency import SPACE, cnn

import modelhopper as mh
from modelhopper.estimator import (
    build_estimator,
    end_epoch,
    evaluate_pass,
    flush_denormals,
    train_pass,
)

BENCH = Path(__file__).resolve().parent
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ------------------------------------------------------------------------- workload
class FirstGridPoints(mh.GridSearch):
    """The first ``n_msts`` points of the grid (all 8 at full size)."""

    def __init__(self, *args: Any, n_msts: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_msts = n_msts

    def propose(self) -> list[dict[str, Any]]:
        return super().propose()[: self.n_msts]


def grid_search(epochs: int, n_msts: int) -> FirstGridPoints:
    return FirstGridPoints(
        cnn, SPACE, epochs=epochs, metric="val_accuracy", direction="maximize", seed=0,
        n_msts=n_msts,
    )  # fmt: skip


def workload_msts(n_msts: int) -> list[dict[str, Any]]:
    """id, params and seed of each MST, exactly as modelhopper numbers and seeds them."""
    search = grid_search(1, n_msts)
    msts = [search.make_mst(i, p) for i, p in enumerate(search.propose())]
    return [{"id": m.id, "params": m.params, "seed": m.seed} for m in msts]


def load_arrays(n_train: int, n_val: int) -> Arrays:
    """The official 60,000 training images and the official 10,000 test images as
    validation; the first ``n_train`` / ``n_val`` of each.

    The training images are in the order of ``mh.datasets.fashion_mnist(seed=0)``'s
    permutation (its train followed by its validation split). Only the examples used are
    scaled to float32, so the runner's memory peak holds one copy of the workload's data.
    """
    from modelhopper.data._datasets import _find_fashion_files, _load_pair, _scale

    paths = _find_fashion_files(None)
    images, labels = _load_pair(paths["train_images"], paths["train_labels"])
    order = np.random.default_rng(0).permutation(len(images))[:n_train]
    test_images, test_labels = _load_pair(paths["test_images"], paths["test_labels"])
    return (
        _scale(images[order], False), labels[order],
        _scale(test_images[:n_val], False), np.array(test_labels[:n_val]),
    )  # fmt: skip


def nbytes(*arrays: np.ndarray) -> int:
    return int(sum(a.nbytes for a in arrays))


def _accuracy(result: Any) -> float:
    return result.metric_sums["accuracy"] / result.n


def _train_mst(mst: dict, epochs: int, data: Arrays, shard: int = 0) -> tuple[list, float]:
    """One MST, ``epochs`` full passes over ``data`` in this process: (accuracies, seconds)."""
    x, y, xv, yv = data
    estimator = build_estimator(cnn, mst["params"], mst["seed"])
    history, seconds = [], 0.0
    for epoch in range(epochs):
        trained = train_pass(estimator, x, y, seed=mst["seed"], epoch=epoch, shard=shard)
        end_epoch(estimator)
        evaluated = evaluate_pass(estimator, xv, yv)
        seconds += trained.seconds + evaluated.seconds
        history.append(_accuracy(evaluated))
    return history, seconds


def _mst_row(mst: dict, history: list[float]) -> dict[str, Any]:
    return {**mst, "val_accuracy": history[-1], "history": history}


# ----------------------------------------------------------------------- sequential
def run_sequential(cfg: dict, data: Arrays) -> dict[str, Any]:
    """One process trains the MSTs one after another on the whole data."""
    rows, compute = [], 0.0
    for mst in cfg["msts"]:
        history, seconds = _train_mst(mst, cfg["epochs"], data)
        compute += seconds
        rows.append(_mst_row(mst, history))
    return {
        "msts": rows,
        "compute_seconds": compute,
        "n_workers": 1,
        "data_bytes_per_worker": [nbytes(*data)],
        "bytes_communicated": 0,
        "comm": "none",
    }


# ------------------------------------------------------------------------------ MOP
def _run_mop(cfg: dict, data: Arrays, executor: Any) -> dict[str, Any]:
    search = grid_search(cfg["epochs"], len(cfg["msts"]))
    run_dir = Path(cfg["tmp"]) / "mop"
    result = search.fit(
        mh.Dataset.from_numpy(*data), n_workers=cfg["workers"], executor=executor,
        store=f"sqlite:///{run_dir}.db", run_dir=run_dir, run_name="compare",
    )  # fmt: skip
    stats = result.stats
    seeds = {m["id"]: m["seed"] for m in cfg["msts"]}
    rows = []
    for mst in sorted(result.msts, key=lambda m: m.id):
        if seeds[mst.id] != mst.seed:
            raise RuntimeError(f"MST {mst.id}: seed {mst.seed} differs from the workload's")
        history = [row["val_accuracy"] for row in mst.history]
        rows.append(_mst_row({"id": mst.id, "params": mst.params, "seed": mst.seed}, history))
    return {
        "msts": rows,
        "compute_seconds": stats.compute_seconds,
        "n_workers": stats.n_workers,
        "data_bytes_per_worker": list(stats.resident_shard_bytes),
        "bytes_communicated": stats.hop_bytes,
        "comm": f"hops of MST state ({stats.n_hops} hops)",
        "mop_wall_seconds": stats.wall_seconds,
        "mop_total_seconds": stats.total_seconds,
        "n_hops": stats.n_hops,
    }


def run_mop_local(cfg: dict, data: Arrays) -> dict[str, Any]:
    """modelhopper MOP: a worker process per shard, MST state hops between them."""
    from modelhopper.executors import LocalExecutor

    # One copy of the data, as MOP keeps for data of any size (the comparison's point;
    # the smoke size is small enough that replicas="auto" would copy it to every worker).
    return _run_mop(cfg, data, LocalExecutor(threads_per_worker=1, replicas=1))


def run_mop_ray(cfg: dict, data: Arrays) -> dict[str, Any]:
    """modelhopper MOP on a single-node Ray instance (one actor per shard)."""
    from modelhopper.executors import RayExecutor

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    executor = RayExecutor(
        threads_per_worker=1,
        init_kwargs={"num_cpus": cfg["workers"], "_temp_dir": _ray_temp(cfg)},
    )
    return _run_mop(cfg, data, executor)


def _ray_temp(cfg: dict) -> str:
    # Ray's session files under the output's tmp dir (Unix socket paths must stay short).
    path = Path(cfg["tmp"]) / "ray"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# ------------------------------------------------------------------------- Ray Tune
def _tune_trial(config: dict, data: Arrays) -> None:
    """A Tune trial as users write one: fetch the data, copy it into its own arrays (as
    ``torch.tensor(x)`` does), train the MST for every epoch, report each epoch."""
    from ray import tune

    torch.set_num_threads(1)
    flush_denormals()  # the numerics of modelhopper's workers, in every system compared
    fetched = nbytes(*data)  # the object store's arrays, mapped into this process
    own = tuple(np.array(a) for a in data)
    mst, epochs = config["mst"], config["epochs"]
    estimator = build_estimator(cnn, mst["params"], mst["seed"])
    x, y, xv, yv = own
    for epoch in range(epochs):
        trained = train_pass(estimator, x, y, seed=mst["seed"], epoch=epoch, shard=0)
        end_epoch(estimator)
        evaluated = evaluate_pass(estimator, xv, yv)
        tune.report({
            "mst_id": mst["id"], "epoch": epoch, "val_accuracy": _accuracy(evaluated),
            "pass_seconds": trained.seconds + evaluated.seconds, "pid": os.getpid(),
            "max_rss": max_rss_bytes(), "fetched_bytes": fetched, "held_bytes": nbytes(*own),
        })  # fmt: skip


def run_ray_tune(cfg: dict, data: Arrays) -> dict[str, Any]:
    """Task parallelism: Ray Tune, one trial per MST, ``workers`` trials of 1 CPU at a time."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Trial processes import this module and mop_efficiency from bench/.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(BENCH), os.environ.get("PYTHONPATH")])
    )
    import ray
    from ray import tune

    ray.init(
        address="local", num_cpus=cfg["workers"], include_dashboard=False,
        logging_level=logging.WARNING, log_to_driver=False, _temp_dir=_ray_temp(cfg),
    )  # fmt: skip

    class Collect(tune.Callback):  # every epoch each trial reports, as the driver sees it
        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            reports.append(result)

    reports: list[dict[str, Any]] = []
    try:
        trainable = tune.with_resources(tune.with_parameters(_tune_trial, data=data), {"cpu": 1})
        tuner = tune.Tuner(
            trainable,
            param_space={"mst": tune.grid_search(cfg["msts"]), "epochs": cfg["epochs"]},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=cfg["workers"],
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name="compare",
                storage_path=str(Path(cfg["tmp"]) / "tune"),
                verbose=0,
                callbacks=[Collect()],
            ),
        )
        grid = tuner.fit()
        if grid.errors:
            raise RuntimeError(f"{len(grid.errors)} Ray Tune trials failed: {grid.errors[0]}")
    finally:
        ray.shutdown()
    by_id = {m["id"]: m for m in cfg["msts"]}
    rows, compute, fetched, held, peaks = [], 0.0, 0, 0, {}
    for mst_id in sorted(by_id):
        epochs = sorted((r for r in reports if r["mst_id"] == mst_id), key=lambda r: r["epoch"])
        if len(epochs) != cfg["epochs"]:
            raise RuntimeError(f"MST {mst_id}: Ray Tune reported {len(epochs)} epochs")
        rows.append(_mst_row(by_id[mst_id], [r["val_accuracy"] for r in epochs]))
        compute += sum(r["pass_seconds"] for r in epochs)
        fetched += epochs[0]["fetched_bytes"]
        held = max(held, epochs[0]["held_bytes"])
        for r in epochs:
            peaks[r["pid"]] = max(peaks.get(r["pid"], 0), r["max_rss"])
    store_bytes = nbytes(*data)  # tune.with_parameters puts the data in the object store once
    return {
        "msts": rows,
        "compute_seconds": compute,
        "n_workers": cfg["workers"],
        "data_bytes_per_worker": [held] * cfg["workers"],
        "data_bytes_shared": store_bytes,
        "bytes_communicated": fetched,
        "comm": "data fetched by trials from the object store",
        "reported_peaks": peaks,
    }


# --------------------------------------------------------------- data parallelism
def run_ddp(cfg: dict, data: Arrays) -> dict[str, Any]:
    """DistributedDataParallel: the MSTs one at a time, each on all workers."""
    return _run_data_parallel(cfg, data, averaging=False)


def run_model_averaging(cfg: dict, data: Arrays) -> dict[str, Any]:
    """Each worker trains on its half for an epoch; then the weights are averaged."""
    return _run_data_parallel(cfg, data, averaging=True)


def _run_data_parallel(cfg: dict, data: Arrays, *, averaging: bool) -> dict[str, Any]:
    import torch.multiprocessing as tmp_mp

    n = cfg["workers"]
    folder = Path(cfg["tmp"]) / ("averaging" if averaging else "ddp")
    folder.mkdir(parents=True, exist_ok=True)
    x, y, xv, yv = data
    per = len(x) // n  # equal halves: DDP ranks must run the same number of steps
    val_parts = np.array_split(np.arange(len(xv)), n)
    for rank in range(n):
        part = slice(rank * per, (rank + 1) * per)
        np.savez(folder / f"rank{rank}.npz", x=x[part], y=y[part], xv=xv[val_parts[rank]],
                 yv=yv[val_parts[rank]])  # fmt: skip
    tmp_mp.spawn(_dp_worker, args=(n, free_port(), cfg, str(folder), averaging), nprocs=n)
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(n)]
    rows = [_mst_row(m, h) for m, h in zip(cfg["msts"], ranks[0]["histories"], strict=True)]
    return {
        "msts": rows,
        "compute_seconds": sum(r["compute_seconds"] for r in ranks),
        "n_workers": n,
        "data_bytes_per_worker": [r["data_bytes"] for r in ranks],
        "bytes_communicated": sum(r["comm_bytes"] for r in ranks),
        "comm": "weights all-reduced each epoch" if averaging else "gradients all-reduced",
        "reported_peaks": {r["pid"]: r["max_rss"] for r in ranks},
        "examples_dropped": len(x) - per * n,
    }


def _counting_allreduce(state, bucket):  # noqa: ANN001 - DDP checks the hook's annotations
    """DDP's default all-reduce, counting the bytes of every gradient bucket it sends."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buffer = bucket.buffer()
    state["bytes"] += buffer.numel() * buffer.element_size()
    return default_hooks.allreduce_hook(None, bucket)


def _dp_worker(rank: int, n: int, port: int, cfg: dict, folder: str, averaging: bool) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    flush_denormals()  # the numerics of modelhopper's workers, in every system compared
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=n)
    with np.load(Path(folder) / f"rank{rank}.npz") as f:
        x, y, xv, yv = (np.array(f[k]) for k in ("x", "y", "xv", "yv"))
    comm = {"bytes": 0}
    histories, compute = [], 0.0
    for mst in cfg["msts"]:
        estimator = build_estimator(cnn, mst["params"], mst["seed"])
        model = estimator.model
        sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
        if not averaging:
            # Same global batch as the other systems: each of the n ranks takes 1/n of it.
            estimator.batch_size = max(1, mst["params"]["batch_size"] // n)
            ddp = DistributedDataParallel(model)  # broadcasts rank 0's weights
            if rank == 0:
                comm["bytes"] += sum(sizes)
            ddp.register_comm_hook(comm, _counting_allreduce)
            estimator.model = ddp
        history = []
        for epoch in range(cfg["epochs"]):
            trained = train_pass(estimator, x, y, seed=mst["seed"], epoch=epoch, shard=rank)
            end_epoch(estimator)
            if averaging:
                with torch.no_grad():
                    for tensor in model.state_dict().values():
                        dist.all_reduce(tensor)
                        tensor /= n
                comm["bytes"] += sum(sizes)
            evaluated = evaluate_pass(dataclasses.replace(estimator, model=model), xv, yv)
            compute += trained.seconds + evaluated.seconds
            sums = torch.tensor(
                [evaluated.metric_sums["accuracy"], evaluated.n], dtype=torch.float64
            )
            dist.all_reduce(sums)
            comm["bytes"] += sums.numel() * sums.element_size()
            history.append(float(sums[0] / sums[1]))
        histories.append(history)
    dist.barrier()
    dist.destroy_process_group()
    report = {
        "rank": rank, "pid": os.getpid(), "max_rss": max_rss_bytes(), "histories": histories,
        "compute_seconds": compute, "comm_bytes": comm["bytes"], "data_bytes": nbytes(x, y, xv, yv),
    }  # fmt: skip
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(report))
    # Leave without the interpreter's teardown: gloo's threads, destroyed there, can abort
    # the process (SIGABRT, "terminate called without an active exception"; seen once in
    # CI, rank 1 of model_averaging; pytorch/pytorch#179291 describes the teardown race).
    # Everything this rank reports is written above.
    os._exit(0)


SYSTEMS = {
    "sequential": run_sequential,
    "mop_local": run_mop_local,
    "mop_ray": run_mop_ray,
    "ray_tune": run_ray_tune,
    "ddp": run_ddp,
    "model_averaging": run_model_averaging,
}


def run_system(name: str, cfg: dict) -> dict[str, Any]:
    """Run one system in this process (a fresh one per system) and measure it."""
    from _compare_measure import ProcessMemory

    from modelhopper.executors._worker import warm_up_torch

    torch.set_num_threads(1)
    flush_denormals()  # the numerics of modelhopper's workers, in every system compared
    warm_up_torch()  # the runner's one-off lazy imports are not the system's (workers pay theirs)
    data = load_arrays(cfg["n_train"], cfg["n_val"])
    with ProcessMemory() as memory:
        started = time.perf_counter()
        out = SYSTEMS[name](cfg, data)
        wall = time.perf_counter() - started
    for pid, peak in out.pop("reported_peaks", {}).items():
        memory.add(int(pid), peak)
    return {"system": name, "wall_seconds": wall, **out, **memory.summary()}
