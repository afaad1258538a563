"""Hybrid mode (an MST's epoch data-parallel on every worker) vs MOP alone, real training.

    python bench/hybrid.py [--smoke-test] [--out DIR]

(a) One MST, the small CNN of bench/mop_efficiency.py (Adam, lr 1e-3), x 6 epochs on
Fashion-MNIST (50,000 train / 10,000 validation), 2 workers, one copy of the data, one
thread per worker, at batch sizes 64 and 128: MOP alone can use one worker at a time.
Each batch size runs with ``hybrid="off"`` and ``hybrid="auto"`` one after another in
this process; reported: wall time of ``fit``, their ratio (target: hybrid >= 1.6x
faster), the epochs trained in groups, and validation accuracy per epoch. With
``hybrid="off"`` the MST's training is sequential SGD over its shard order (the engine's
invariant 2, tests/test_equivalence.py); a group epoch is SGD over global batches that
take every shard's rows in proportion (tests/test_hybrid.py), so accuracy may differ by
the noise of a different batch order.

(b) ASHA as in bench/procedures.py (27 MLPs, at most 9 epochs, 20,000 / 5,000 examples,
2 workers), ``hybrid="off"`` vs ``"auto"``: wall time, worker utilisation (step seconds
/ (wall x workers); a group member's seconds include its all-reduce waits), epochs
trained in groups, best validation accuracy (target utilisation with hybrid >= 0.95),
and the workers' share of the time in visits (``RunStats.busy_share``: utilisation plus
each visit's fixed costs; the rest they waited for a visit).
Then why groups cannot fill (b)'s idle time: one epoch of its MLPs alone vs in a group of
two (ms per step, all-reduce, speed-up), each in forked processes one after another.
The same ASHA with (a)'s small CNN in place of the MLPs (lr and batch size searched, one
thread per worker): the same run shape on a model whose step is large against its fixed
costs, where a group pays.

Results: bench/results/hybrid.{json,md} (``--smoke-test``: digits-sized, hybrid_smoke.*).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import modelhopper as mh
from modelhopper._data_parallel import ShardPart, group_train_pass, n_global_batches
from modelhopper.estimator import train_pass
from modelhopper.executors._group import GroupSpec, group_channel
from modelhopper.store import EventKind, open_store

sys.path.insert(0, str(Path(__file__).parent))
from mop_efficiency import cnn  # noqa: E402  (the small CNN; Adam with the params' lr and l2)

from procedures import SPACE as ASHA_SPACE  # noqa: E402
from procedures import make_estimator as asha_estimator  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODES = ("off", "auto")


def _group_epochs(url: str, name: str) -> int:
    store = open_store(url)
    try:
        return sum(e.kind is EventKind.GROUP_EPOCH for e in store.list_events(name))
    finally:
        store.close()


def _fit(
    procedure: mh.BaseProcedure, data: mh.Dataset, folder: Path, name: str, **executor: Any
) -> tuple[mh.Result, float, int]:
    url = f"sqlite:///{folder}/runs.db"
    started = time.perf_counter()
    result = procedure.fit(
        data, n_workers=2, run_name=name, store=url, run_dir=folder / name,
        executor=mh.LocalExecutor(replicas=1, **executor),
    )  # fmt: skip
    return result, time.perf_counter() - started, _group_epochs(url, name)


def lone_cnn(data: mh.Dataset, batch_size: int, epochs: int, folder: Path) -> dict[str, Any]:
    """(a): one CNN, MOP alone and hybrid, one after another."""
    row: dict[str, Any] = {"batch_size": batch_size}
    for mode in MODES:
        search = mh.GridSearch(
            cnn, {"batch_size": batch_size, "lr": 1e-3, "l2": 0.0}, epochs=epochs,
            metric="val_accuracy",
            direction="maximize", seed=0, hybrid=mode,
        )  # fmt: skip
        name = f"cnn-{batch_size}-{mode}"
        result, wall, grouped = _fit(search, data, folder, name, threads_per_worker=1)
        history = result.msts[0].history
        row[mode] = {
            "wall_seconds": round(wall, 2), "group_epochs": grouped,
            "val_accuracy": [round(h["val_accuracy"], 4) for h in history],
        }  # fmt: skip
        print(f"(a) batch {batch_size} hybrid={mode}: {wall:.1f} s, {grouped} group epochs",
              flush=True)  # fmt: skip
    row["speedup"] = round(row["off"]["wall_seconds"] / row["auto"]["wall_seconds"], 3)
    row["final_accuracy_difference"] = round(
        row["auto"]["val_accuracy"][-1] - row["off"]["val_accuracy"][-1], 4
    )
    return row


CNN_SPACE = {"lr": mh.loguniform(1e-4, 3e-2), "batch_size": mh.choice([64, 128]), "l2": 0.0}
# (b)'s models: estimator factory, space, executor settings
ASHA_MODELS = {
    "mlp": (asha_estimator, ASHA_SPACE, {}),  # bench/procedures.py's, default threads
    "cnn": (cnn, CNN_SPACE, {"threads_per_worker": 1}),  # (a)'s CNN, as (a) runs it
}


def asha(
    data: mh.Dataset, n_msts: int, max_epochs: int, folder: Path, models: str = "mlp"
) -> list[dict[str, Any]]:
    """(b): ASHA's whole run, MOP alone and hybrid; ``models``: "mlp" (bench/procedures.py's
    space, default threads) or "cnn" ((a)'s CNN, one thread per worker)."""
    factory, space, threads = ASHA_MODELS[models]
    rows = []
    for mode in MODES:
        procedure = mh.ASHA(
            factory, space, min_epochs=1, max_epochs=max_epochs,
            reduction_factor=3, n_msts=n_msts, metric="val_accuracy", direction="maximize",
            seed=0, hybrid=mode,
        )  # fmt: skip
        result, wall, grouped = _fit(procedure, data, folder, f"asha-{models}-{mode}", **threads)
        rows.append({
            "hybrid": mode, "wall_seconds": round(wall, 2), "group_epochs": grouped,
            "utilisation": round(result.stats.efficiency, 3),
            "busy_share": round(result.stats.busy_share, 3),
            "epochs_trained": sum(m.epochs_done for m in result.msts),
            "best_val_accuracy": round(max(h["val_accuracy"] for m in result.msts
                                           for h in m.history), 4),
        })  # fmt: skip
        print(f"(b) ASHA of {models}s hybrid={mode}: {wall:.1f} s, utilisation "
              f"{rows[-1]['utilisation']}", flush=True)  # fmt: skip
    return rows


def _alone(x: np.ndarray, y: np.ndarray, hidden: int, batch: int, out: Any) -> None:
    """One worker's epoch over both shards (MOP with one MST: two sub-epochs in turn)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    estimator = asha_estimator({"hidden": hidden, "lr": 1e-3, "batch_size": batch})
    started = time.perf_counter()
    for shard in (0, 1):
        train_pass(estimator, x[shard::2], y[shard::2], seed=1, epoch=0, shard=shard)
    out.put(("alone", time.perf_counter() - started, 0.0))


def _member(rank: int, rendezvous: str, x: np.ndarray, y: np.ndarray, hidden: int, batch: int,
            out: Any) -> None:  # fmt: skip
    """One member's share of the same epoch in a group of two (shared-memory all-reduce)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    estimator = asha_estimator({"hidden": hidden, "lr": 1e-3, "batch_size": batch})
    spec = GroupSpec((0, 1), rank, rendezvous, shared_memory=True)
    started = time.perf_counter()
    with group_channel(spec) as channel:
        group_train_pass(estimator, [ShardPart(rank, x[rank::2], y[rank::2])], seed=1, epoch=0,
                         n_rows=len(y), all_reduce=channel.all_reduce)  # fmt: skip
    out.put((f"member {rank}", time.perf_counter() - started, channel.seconds))


def group_step_costs(data: mh.Dataset, folder: Path) -> list[dict[str, Any]]:
    """(b), why: an epoch of (b)'s MLPs alone vs in a group of two, in forked processes
    one after another (one thread each): per global batch, a member pays the whole
    optimizer step and a step's fixed costs, plus the all-reduce."""
    context = mp.get_context("fork")
    x, y = data.train.x, data.train.y
    rows = []
    for hidden in (64, 256):
        for batch in (64, 128):
            out = context.Queue()
            alone = context.Process(target=_alone, args=(x, y, hidden, batch, out))
            alone.start()
            _, alone_seconds, _ = out.get(timeout=600)
            alone.join()
            rendezvous = str(folder / f"group-{hidden}-{batch}")
            members = [context.Process(target=_member, args=(r, rendezvous, x, y, hidden, batch,
                                                             out)) for r in (0, 1)]  # fmt: skip
            for member in members:
                member.start()
            shares = [out.get(timeout=600) for _ in members]
            for member in members:
                member.join()
            steps = n_global_batches(len(y), batch)
            group_seconds = max(seconds for _, seconds, _ in shares)
            allreduce = max(seconds for _, _, seconds in shares)
            rows.append({
                "hidden": hidden, "batch_size": batch, "steps": steps,
                "alone_ms_per_step": round(1000 * alone_seconds / steps, 3),
                "group_ms_per_step": round(1000 * group_seconds / steps, 3),
                "allreduce_ms_per_step": round(1000 * allreduce / steps, 3),
                "group_speedup": round(alone_seconds / group_seconds, 3),
            })  # fmt: skip
            print(f"(b) MLP {hidden} batch {batch}: group speed-up {rows[-1]['group_speedup']}",
                  flush=True)  # fmt: skip
    return rows


def _asha_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| hybrid | wall s | utilisation (target >= 0.95) | workers in visits | group epochs | "
        "epochs trained | best val acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hybrid']} | {r['wall_seconds']} | **{r['utilisation']}** | "
            f"{r['busy_share']} | {r['group_epochs']} | {r['epochs_trained']} | "
            f"{r['best_val_accuracy']} |"
        )
    return lines


def _markdown(
    cnn_rows: list[dict[str, Any]], asha_rows: list[dict[str, Any]],
    asha_cnn_rows: list[dict[str, Any]], meta: dict,
) -> str:  # fmt: skip
    lines = [
        "# Hybrid mode: data-parallel group epochs vs MOP alone",
        "",
        f"{meta['machine']}, torch {meta['torch']}; `python bench/hybrid.py`, {meta['date']}. "
        "2 workers, one copy of the data.",
        "",
        f"## (a) One MST: {meta['cnn']}",
        "",
        "| batch | MOP alone s | hybrid s | speedup (target >= 1.6) | group epochs | "
        "val accuracy per epoch, MOP alone | hybrid | final difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in cnn_rows:
        lines.append(
            f"| {r['batch_size']} | {r['off']['wall_seconds']} | {r['auto']['wall_seconds']} | "
            f"**{r['speedup']}** | {r['auto']['group_epochs']} | {r['off']['val_accuracy']} | "
            f"{r['auto']['val_accuracy']} | {r['final_accuracy_difference']:+.4f} |"
        )
    lines += [
        "",
        f"## (b) ASHA: {meta['asha']}",
        "",
        *_asha_table(asha_rows),
        "",
        "Why groups do not fill (b)'s idle time: one epoch of its MLPs (784-hidden-10, "
        "Adam) alone on one worker vs in a group of two, each a forked process, one thread:",
        "",
        "| hidden | batch | ms per step alone | ms per global step in a group | of which "
        "all-reduce | group speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in meta.get("group_steps", []):
        lines.append(
            f"| {r['hidden']} | {r['batch_size']} | {r['alone_ms_per_step']} | "
            f"{r['group_ms_per_step']} | {r['allreduce_ms_per_step']} | "
            f"**{r['group_speedup']}** |"
        )
    lines += ["", f"## (b) ASHA with the small CNN: {meta['asha_cnn']}", "",
              *_asha_table(asha_cnn_rows)]  # fmt: skip
    return "\n".join(lines) + "\n"


def _head(data: mh.Dataset, n_train: int, n_val: int) -> mh.Dataset:
    """The first examples of each split."""
    train, val = data.train, data.validation
    return mh.Dataset.from_numpy(train.x[:n_train], train.y[:n_train], val.x[:n_val], val.y[:n_val])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny size, for CI")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    smoke = args.smoke_test
    images = mh.datasets.fashion_mnist(seed=0, n_train=2000 if smoke else 50_000)
    if smoke:
        images = _head(images, len(images.train), 500)
    n_train, n_val, n_msts, max_epochs = (2000, 500, 4, 3) if smoke else (20000, 5000, 27, 9)
    mlp_data = _head(mh.datasets.fashion_mnist(seed=0, flatten=True), n_train, n_val)
    epochs = 2 if smoke else 6
    with tempfile.TemporaryDirectory() as tmp:
        cnn_rows = [lone_cnn(images, b, epochs, Path(tmp)) for b in (64, 128)]
        asha_rows = asha(mlp_data, n_msts, max_epochs, Path(tmp))
        cnn_data = _head(images, n_train, n_val)
        asha_cnn_rows = asha(cnn_data, n_msts, max_epochs, Path(tmp), models="cnn")
        group_steps = group_step_costs(mlp_data, Path(tmp))
    meta = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "smoke": smoke,
        "cnn": f"the small CNN (2 conv + 2 dense, Adam 1e-3) x {epochs} epochs on "
               f"Fashion-MNIST {len(images.train)} / {len(images.validation)}, one thread per "
               "worker",
        "asha": f"{n_msts} MLPs, 1-{max_epochs} epochs, reduction factor 3, Fashion-MNIST "
                f"{n_train} / {n_val} (bench/procedures.py's space), default threads",
        "asha_cnn": f"{n_msts} of (a)'s CNN (lr loguniform 1e-4-3e-2, batch 64 or 128), "
                    f"1-{max_epochs} epochs, reduction factor 3, Fashion-MNIST {n_train} / "
                    f"{n_val}, one thread per worker",
        "group_steps": group_steps,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "hybrid_smoke" if smoke else "hybrid"
    payload = {"meta": meta, "lone_cnn": cnn_rows, "asha": asha_rows, "asha_cnn": asha_cnn_rows}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    markdown = _markdown(cnn_rows, asha_rows, asha_cnn_rows, meta)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
