"""End to end, as a user waits for it: the whole ``fit()`` call against a plain PyTorch loop.

    python bench/end_to_end.py                # full size (~5 minutes on 2 cores)
    python bench/end_to_end.py --smoke-test   # tiny sizes, for CI

For each workload, in this one process (a plain script, no ``__main__`` guard
needed): ``search.fit(...)`` on 2 workers, data already in memory, and the same
trainings as a plain single-threaded PyTorch loop, one MST after another (each
epoch: a seeded shuffle, mini-batch SGD over the whole training set, then a
pass over the validation set). The limit is the plain loop's time / 2 workers;
ratio = limit / fit seconds (1.0 = as fast as the hardware allows). This
shared machine's speed drifts by tens of percent between minutes, so each
workload is measured ``--repeat`` times (default 2), fit and plain loop side
by side each time, alternating which goes first; the table gives the median
ratio (the lower middle one: of 2, the lower), every repetition's figures are
in the JSON.
Each time, the same plain loop also runs split in two halves of equal seconds,
in two processes started together: the time until both end is what two
single-threaded processes achieve side by side on this machine (they share its
caches and memory bandwidth), the reference that tells the hardware's share of
a ratio below 1 from ours.
The plain loop flushes denormal floats to zero as the workers do, so both
compute the same numbers (without it, the MLP grid's plain loop is slower:
one MST's weights decay into denormals).
Memory is measured in one more ``fit`` per workload, after the timed ones and not
timed: a separate monitor process samples every 0.5 s the memory of this process
and its children: the peak of the summed PSS (each shared page counted once,
split between its sharers: the memory the tree really uses) and, for reference,
of the summed RSS (shared pages counted once per process). Not during the timed
fits: to count PSS the kernel walks every page of the tree, ~0.4 s of a core
over the MLP grid's fit (measured), which the plain loop would not pay.

Writes bench/results/end_to_end.json and .md (``--out`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mop_efficiency import cnn, mlp  # the same small CNN and MLP as the efficiency benchmark

import modelhopper as mh
from modelhopper.cli import demo_estimator  # the README example's factory
from modelhopper.estimator import denormals_flushed
from modelhopper.executors._worker import warm_up_torch

RESULTS = Path(__file__).parent / "results"
N_WORKERS = 2


# -- the workloads ---------------------------------------------------------------------
def workloads(smoke: bool) -> list[dict]:
    """Each workload's data is loaded when it runs (``data`` is a function): the README
    example runs in a process holding only what a user's script would, not Fashion-MNIST
    (a larger process takes longer to fork its workers)."""

    def digits() -> mh.Dataset:
        return mh.datasets.digits()

    def fmnist() -> mh.Dataset:
        data = mh.datasets.fashion_mnist(n_train=50_000)
        return _head(data, 2000, 500) if smoke else data

    def official() -> mh.Dataset:  # 60,000 train, the official 10,000 test as validation
        data = _official_split(mh.datasets.fashion_mnist(n_train=50_000))
        return _head(data, 3000, 500) if smoke else data

    readme_space = {
        "hidden": mh.choice([32, 128]), "lr": mh.loguniform(1e-4, 1e-1),
        "l2": mh.choice([0.0, 1e-4]), "batch_size": 32,
    }  # fmt: skip
    mlp_space = {
        "lr": mh.grid([1e-3, 1e-4]), "batch_size": mh.grid([64, 256]), "l2": mh.grid([1e-4, 1e-5]),
    }  # fmt: skip
    cnn_space = {"lr": mh.grid([1e-3, 3e-3]), "batch_size": mh.grid([64, 128]), "l2": 0.0}
    common = {"metric": "val_accuracy", "direction": "maximize", "seed": 0}
    return [
        dict(name="README example (digits, 8 MLPs x 5 epochs)", data=digits,
             search=lambda: mh.RandomSearch(demo_estimator, readme_space, n_msts=8, epochs=5,
                                            **common)),
        dict(name="MLP grid (Fashion-MNIST 60k/10k, 8 MLPs 784-256-10 x 3 epochs)",
             data=official,
             search=lambda: mh.GridSearch(mlp, mlp_space, epochs=1 if smoke else 3, **common)),
        dict(name="CNN (Fashion-MNIST 50k/10k, 4 small CNNs x 1 epoch)", data=fmnist,
             search=lambda: mh.GridSearch(cnn, cnn_space, epochs=1, **common)),
    ]  # fmt: skip


def _official_split(fmnist: mh.Dataset) -> mh.Dataset:
    train_x = np.concatenate([fmnist.train.x, fmnist.validation.x])
    train_y = np.concatenate([fmnist.train.y, fmnist.validation.y])
    return mh.Dataset.from_numpy(train_x, train_y, fmnist.test.x, fmnist.test.y)


def _head(data: mh.Dataset, n_train: int, n_val: int) -> mh.Dataset:
    return mh.Dataset.from_numpy(
        data.train.x[:n_train], data.train.y[:n_train],
        data.validation.x[:n_val], data.validation.y[:n_val],
    )  # fmt: skip


# -- the plain loop ------------------------------------------------------------------------
def plain_loop(
    search, data: mh.Dataset, msts: list[tuple[dict, int]]
) -> tuple[float, list[float], list[float]]:
    """Each MST trained alone, one after another, single-threaded; returns seconds,
    accuracies and each MST's seconds."""
    x, y = torch.from_numpy(np.array(data.train.x)), torch.from_numpy(np.array(data.train.y))
    vx, vy = (
        torch.from_numpy(np.array(data.validation.x)),
        torch.from_numpy(np.array(data.validation.y)),
    )
    accuracies, each = [], []
    started = time.perf_counter()
    for params, seed in msts:
        began = time.perf_counter()
        torch.manual_seed(seed)
        estimator = search.make_estimator(params)
        model, optimizer, loss_fn = estimator.model, estimator.optimizer, estimator.loss
        generator = torch.Generator().manual_seed(seed)
        for _ in range(search.epochs):
            model.train()
            for index in torch.randperm(len(x), generator=generator).split(estimator.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[index]), y[index])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                correct = sum(
                    int((model(bx).argmax(1) == by).sum())
                    for bx, by in zip(vx.split(256), vy.split(256), strict=True)
                )
        accuracies.append(correct / len(vx))
        each.append(time.perf_counter() - began)
    return time.perf_counter() - started, accuracies, each


# -- two plain loops at once: what two single-threaded processes achieve here --------------
def two_plain_loops(search, data: mh.Dataset, halves: list[list[tuple[dict, int]]]) -> float:
    """Seconds until both of two forked processes, started together, have run their half
    of the plain loop: the machine's own limit for 2 single-threaded workers (they share
    caches and memory bandwidth), against which no scheduling can do better."""
    context = multiprocessing.get_context("fork")  # the data is already in this process
    start, results = context.Barrier(3), context.Queue()
    processes = [
        context.Process(target=_half, args=(search, data, half, start, results)) for half in halves
    ]
    for process in processes:
        process.start()
    start.wait(timeout=120)
    seconds = [results.get(timeout=3600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    if any(process.exitcode != 0 for process in processes):
        sys.exit("end_to_end: a side-by-side plain loop failed")
    return max(seconds)


def _half(search, data, msts, start, results) -> None:
    start.wait(timeout=120)
    seconds, _, _ = _plain(search, data, msts)
    results.put(seconds)


def balanced_halves(msts: list[tuple[dict, int]], seconds: list[float]) -> list[list]:
    """The MSTs in two halves of nearly equal plain-loop seconds (longest first, each to the
    lighter half)."""
    halves: list[list] = [[], []]
    loads = [0.0, 0.0]
    for i in sorted(range(len(msts)), key=lambda i: -seconds[i]):
        lighter = loads.index(min(loads))
        halves[lighter].append(msts[i])
        loads[lighter] += seconds[i]
    return halves


# -- memory of the process tree, sampled by another process ---------------------------------
_MONITOR = """
import sys, time, psutil
root, interval = psutil.Process(int(sys.argv[1])), float(sys.argv[2])
peak_pss = peak_rss = 0
print("ready", flush=True)  # started and imported: the timed part may begin
while not sys.stdin.closed:
    pss = rss = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        break
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss += info.pss
        rss += info.rss
    peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
    import select
    if select.select([sys.stdin], [], [], interval)[0]:
        break
print(peak_pss, peak_rss)
"""


class TreeMemory:
    """Peak PSS and RSS of this process and its children, sampled from outside."""

    def __enter__(self) -> TreeMemory:
        self._monitor = subprocess.Popen(
            [sys.executable, "-c", _MONITOR, str(os.getpid()), "0.5"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Its start (a Python process importing psutil) is not part of what is timed.
        assert self._monitor.stdout is not None and self._monitor.stdout.readline() == "ready\n"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._monitor.communicate("stop\n", timeout=60)
        pss, rss = (int(v) for v in out.split())
        self.peak_pss, self.peak_rss = pss, rss


# -- one workload, side by side ---------------------------------------------------------------
def run_workload(workload: dict, repeat: int) -> dict:
    """``repeat`` side-by-side measurements; the row's figures come from the one with the
    median ratio (the lower middle one for an even count)."""
    workload = {**workload, "loaded": workload["data"]()}
    runs = [_measure(workload, msts=None)]  # fit first: it names the MSTs (seeded)
    known = [(p, seed) for p, seed in runs[0].pop("msts")]
    for i in range(1, repeat):
        runs.append(_measure(workload, msts=known if i % 2 == 1 else None))
        runs[-1].pop("msts")
    median = sorted(runs, key=lambda r: r["ratio"])[(len(runs) - 1) // 2]
    memory = _peak_memory(workload, known)
    return {**median, **memory, "ratios": [r["ratio"] for r in runs], "repetitions": runs}


def _peak_memory(workload: dict, msts: list[tuple[dict, int]]) -> dict:
    """The process tree's peak memory over one more fit of the same MSTs (not timed)."""
    search, data = workload["search"](), workload["loaded"]
    with TreeMemory() as memory:
        _fit(search, data, msts)
    return {
        "peak_tree_pss_gib": round(memory.peak_pss / 2**30, 3),
        "peak_tree_rss_gib": round(memory.peak_rss / 2**30, 3),
    }


def _measure(workload: dict, msts: list[tuple[dict, int]] | None) -> dict:
    """Fit and plain loop side by side; the plain loop first when the MSTs are known."""
    search, data = workload["search"](), workload["loaded"]
    plain = _plain(search, data, msts) if msts is not None else None
    started = time.perf_counter()
    result = _fit(search, data, msts)
    fit_seconds = time.perf_counter() - started
    msts = [(m.params, m.seed) for m in result.msts]  # the same MSTs, trained plainly
    plain_seconds, plain_acc, each = plain if plain is not None else _plain(search, data, msts)
    side_by_side = two_plain_loops(search, data, balanced_halves(msts, each))
    s = result.stats
    limit = plain_seconds / N_WORKERS
    mop_acc = [m.metrics["val_accuracy"] for m in result.msts]
    first_epoch = _first_epoch_slowdown(result)
    return {
        "workload": workload["name"],
        "plain_first": plain is not None,
        "msts": msts,
        "n_msts": len(msts),
        "plain_loop_seconds": round(plain_seconds, 2),
        "limit_seconds": round(limit, 2),
        "fit_seconds": round(fit_seconds, 2),
        "ratio": round(limit / fit_seconds, 3),
        "fit_vs_plain_loop": round(plain_seconds / fit_seconds, 2),
        "side_by_side_seconds": round(side_by_side, 2),
        "side_by_side_ratio": round(limit / side_by_side, 3),
        "fit_vs_side_by_side": round(side_by_side / fit_seconds, 3),
        "startup_seconds": round(s.startup_seconds, 2),
        "outside_loop_seconds": round(fit_seconds - s.wall_seconds, 2),
        "in_run_efficiency": round(s.efficiency, 3),
        "dispatch_ms_per_visit": round(1000 * s.dispatch_seconds_per_visit, 3),
        "record_ms_per_visit": round(1000 * s.record_seconds / max(s.n_visits, 1), 2),
        "n_visits": s.n_visits,
        "first_epoch_over_later_max": first_epoch,
        "dataset_gib": round(data.nbytes / 2**30, 3),
        "mean_val_accuracy_plain": round(float(np.mean(plain_acc)), 4),
        "mean_val_accuracy_mop": round(float(np.mean(mop_acc)), 4),
    }


def _fit(search, data: mh.Dataset, msts: list[tuple[dict, int]] | None):
    """``search.fit`` as a user's script calls it (a fresh run folder and store); its MSTs
    are ``msts`` when given (the search is seeded)."""
    with tempfile.TemporaryDirectory() as run_dir:
        result = search.fit(data, n_workers=N_WORKERS, run_dir=run_dir,
                            store=f"sqlite:///{run_dir}/runs.db")  # fmt: skip
    assert msts is None or msts == [(m.params, m.seed) for m in result.msts]
    return result


def _plain(
    search, data: mh.Dataset, msts: list[tuple[dict, int]]
) -> tuple[float, list[float], list[float]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with denormals_flushed():  # the same numerics as the workers: the same trainings
        measured = plain_loop(search, data, msts)
    torch.set_num_threads(threads)
    return measured


def _first_epoch_slowdown(result) -> float | None:
    """Max over MSTs of (first epoch's train seconds / their later epochs' mean)."""
    ratios = []
    for mst in result.msts:
        seconds = [row["train_seconds"] for row in mst.history]
        if len(seconds) > 1:
            ratios.append(seconds[0] / float(np.mean(seconds[1:])))
    return round(max(ratios), 3) if ratios else None


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# End to end: `fit()` against a plain PyTorch loop",
        "",
        f"{meta['machine']}; {N_WORKERS} workers; limit = plain single-threaded loop / "
        f"{N_WORKERS}; ratio = limit / fit (1.0 is the hardware's limit), the median of "
        f"{meta['repeat']} side-by-side measurements (the row's other figures are that one's; "
        "the plain loop went first in every other one). 2 plain loops at once: the plain "
        "loop's MSTs in two halves of equal plain seconds, run by two forked processes started "
        "together, until both end: what 2 single-threaded processes achieve on this machine; "
        "fit vs that = its seconds / fit's (1.0: fit is as fast as two plain loops at once). "
        "Memory: peak over "
        "one more fit (not timed) of the summed PSS of the script's process tree (RSS sum "
        "for reference). "
        f"`python bench/end_to_end.py`, {meta['date']}.",
        "",
        "| workload | plain loop s | limit s | fit() s | ratio (each run) | fit vs plain loop | "
        "2 plain loops at once s (limit / that) | fit vs 2 plain loops at once | "
        "worker start-up s | outside the loop s | in-run efficiency | driver ms per visit "
        "(dispatch / record) | peak PSS GiB (RSS) | mean val acc plain / MOP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['plain_loop_seconds']} | {r['limit_seconds']} | "
            f"{r['fit_seconds']} | **{r['ratio']}** ({', '.join(map(str, r['ratios']))}) | "
            f"{r['fit_vs_plain_loop']}x | "
            f"{r['side_by_side_seconds']} ({r['side_by_side_ratio']}) | "
            f"**{r['fit_vs_side_by_side']}** | "
            f"{r['startup_seconds']} | {r['outside_loop_seconds']} | {r['in_run_efficiency']} | "
            f"{r['dispatch_ms_per_visit']} / {r['record_ms_per_visit']} | "
            f"{r['peak_tree_pss_gib']} ({r['peak_tree_rss_gib']}) | "
            f"{r['mean_val_accuracy_plain']} / {r['mean_val_accuracy_mop']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--only", type=int, nargs="*", help="workload indices to run (0, 1, 2)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="side-by-side measurements per workload"
    )
    args = parser.parse_args()
    repeat = max(1, args.repeat)
    # Pay torch's one-off lazy imports before either side is timed, as any script has.
    warm_up_torch()
    rows = []
    for index, workload in enumerate(workloads(args.smoke_test)):
        if args.only is not None and index not in args.only:
            continue
        rows.append(run_workload(workload, repeat))
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "load_average": os.getloadavg(),
        "repeat": repeat,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "end_to_end_smoke" if args.smoke_test else "end_to_end"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(_markdown(rows, meta))
    print(_markdown(rows, meta))


main()
