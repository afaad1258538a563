"""Anytime performance on the LCBench surrogate: modelhopper's procedures on the real
engine (``SurrogateExecutor``) side by side with Optuna, Syne Tune and DEHB.

    python bench/anytime.py [--smoke-test] [--seeds N] [--first-seed S] [--max-budget B]
                            [--workers 4 32] [--tasks T ...] [--methods M ...] [--jobs J]
    python bench/anytime.py --merge A.json B.json [--methods M ...] [--up-to FTE] --tag AB
    python bench/anytime.py --matrix --tag matrix [--merge A.json B.json ...]

For each LCBench task, number of workers and seed, every method searches LCBench's
7-hyperparameter space (epochs 1-52) on a simulated clock until it has used
``max-budget`` full-training equivalents (FTE) of compute: 1 FTE is the mean
simulated time of training one random configuration for all 52 epochs on that
task, so a budget of B FTE is B x FTE / workers of simulated wall time. The
incumbent at time t is the best validation accuracy any evaluation the method
heard by t; its normalised regret is (best - incumbent) / (best - worst), where
best and worst are the highest and lowest accuracy of a fixed sample of random
configurations (and of everything any method found). Reported at 10, 30, 100 and
300 FTE (those up to max-budget): mean over tasks and seeds, with the standard
error over seeds of the task-averaged regret.

modelhopper's procedures run unchanged on the real driver, scheduler and store
(``SurrogateExecutor(stop_at=...)`` ends a run when its simulated time is up);
the peers run on ``bench/_anytime_peers.py``'s simulation of the same cost model.
Writes bench/results/anytime.json, anytime.md and anytime_<workers>.png
(anytime_smoke.* with --smoke-test). The JSON keeps each run's incumbents, so a long
measurement can be split (e.g. ``--seeds 5`` and ``--seeds 5 --first-seed 5``, runs
apart) and ``--merge`` makes the one table both would have made in one run.
``--up-to 30`` reads files run to 30 FTE or more up to 30 FTE, so runs to different
budgets share one table (the regret's zero stays the best any run heard).
``--matrix`` reads each file's runs up to the budget that file ran to (``--merge``'s
files, else ``MATRIX_SOURCES``): files of any budgets and worker counts make one table
of the whole matrix, each cell with the number of seeds that reached it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
# Eight LCBench (OpenML) tasks: the first eight of YAHPO Gym's list, small to large.
TASKS = (3945, 7593, 34539, 126025, 126026, 126029, 146212, 167104)
BUDGETS = (10, 30, 100, 300)
MAX_EPOCHS = 52
SAMPLE = 2000  # random configurations that fix each task's FTE, best and worst

# In brackets: sampler="kde" or "tpe", mode="stopping", policy="oldest_first" (else the defaults:
# random proposals, promotion mode, longest remaining work first); "equal epochs":
# Hyperband(bracket_weights="equal_epochs") (else its default, "geometric"); "random brackets":
# Hyperband(bracket_order="random") (else "interleaved", the order every earlier result file
# measured, pinned so that its commands still reproduce it; "random" is the default since
# 2026-12-05); "replicated":
# every worker holds every shard (SurrogateExecutor(replicas="all")), as the peers' workers
# each hold the whole data set (else one copy, as MOP keeps it); "any order":
# train_order="any" (each sub-epoch on whichever untrained shard's worker is free); "4 shards
# per worker": the data cut into 4 logical shards per worker (n_shards=4p; else one each);
# "quarter of data per worker": every shard on p/4 workers (replicas=p//4; on 32 workers
# 8, so each worker holds a quarter of the data, where the peers' hold all of it; the train
# order stays fixed, and a sub-epoch runs on whichever holder of its shard is free);
# "shared validation": every worker can evaluate every shard's validation part
# (SurrogateExecutor(shared_validation=True)), so an epoch is evaluated where its training
# ends, with no walk through the other workers (one copy of the training data still).
MH_METHODS = (
    "mh RandomSearch",
    "mh TPESearch",
    "mh SuccessiveHalving",
    "mh ASHA",
    "mh ASHA (oldest first)",
    "mh ASHA (stopping, oldest first)",
    "mh ASHA (tpe, stopping, oldest first)",
    "mh ASHA (kde, stopping, oldest first)",
    "mh Hyperband",
    "mh Hyperband (stopping, oldest first)",
    "mh Hyperband (equal epochs, stopping, oldest first)",
    "mh Hyperband (random brackets, stopping, oldest first)",
    "mh Hyperband (tpe, stopping, oldest first)",
    "mh Hyperband (kde, stopping, oldest first)",
    "mh Hyperband (kde, random brackets, stopping, oldest first)",
    "mh ASHA (stopping, oldest first, replicated)",
    "mh Hyperband (stopping, oldest first, replicated)",
    "mh Hyperband (kde, random brackets, stopping, oldest first, replicated)",
    "mh ASHA (stopping, oldest first, any order)",
    "mh Hyperband (stopping, oldest first, any order)",
    "mh ASHA (stopping, oldest first, any order, 4 shards per worker)",
    "mh Hyperband (stopping, oldest first, any order, 4 shards per worker)",
    "mh ASHA (stopping, oldest first, quarter of data per worker)",
    "mh Hyperband (stopping, oldest first, quarter of data per worker)",
    "mh Hyperband (random brackets, stopping, oldest first, quarter of data per worker)",
    "mh ASHA (stopping, oldest first, shared validation)",
    "mh Hyperband (random brackets, stopping, oldest first, shared validation)",
    "mh PBT",
    "mh RandomSearch (replicated)",
    "mh TPESearch (replicated)",
    "mh SuccessiveHalving (replicated)",
    "mh PBT (replicated)",
    "mh RandomSearch (oldest first)",
    "mh TPESearch (oldest first)",
)
# Which peers implement the same algorithm as a modelhopper procedure: Syne Tune's
# ASHA and BOHB and Optuna's pruners stop a trial at a rung (stopping mode); no peer
# here has promotion-mode ASHA (Syne Tune 0.16 dropped it).
SAME_ALGORITHM = {
    "mh ASHA (stopping, oldest first)": ("Syne Tune ASHA",),
    "mh Hyperband (stopping, oldest first)": ("Syne Tune Hyperband",),
    "mh Hyperband (equal epochs, stopping, oldest first)": ("Syne Tune Hyperband",),
    "mh Hyperband (random brackets, stopping, oldest first)": ("Syne Tune Hyperband",),
    "mh ASHA (tpe, stopping, oldest first)": ("Syne Tune BOHB", "Optuna TPE + SH pruner"),
    "mh ASHA (kde, stopping, oldest first)": ("Syne Tune BOHB",),
    "mh Hyperband (tpe, stopping, oldest first)": ("Optuna TPE + Hyperband pruner",),
    "mh Hyperband (kde, random brackets, stopping, oldest first)": ("Syne Tune BOHB",),
    "mh ASHA (stopping, oldest first, replicated)": ("Syne Tune ASHA",),
    "mh Hyperband (stopping, oldest first, replicated)": ("Syne Tune Hyperband",),
    "mh Hyperband (kde, random brackets, stopping, oldest first, replicated)": ("Syne Tune BOHB",),
    "mh ASHA (stopping, oldest first, any order)": ("Syne Tune ASHA",),
    "mh Hyperband (stopping, oldest first, any order)": ("Syne Tune Hyperband",),
    "mh ASHA (stopping, oldest first, quarter of data per worker)": ("Syne Tune ASHA",),
    "mh Hyperband (stopping, oldest first, quarter of data per worker)": ("Syne Tune Hyperband",),
    "mh ASHA (stopping, oldest first, shared validation)": ("Syne Tune ASHA",),
    "mh Hyperband (random brackets, stopping, oldest first, shared validation)": (
        "Syne Tune Hyperband",
    ),
    "mh Hyperband (random brackets, stopping, oldest first, quarter of data per worker)": (
        "Syne Tune Hyperband",
    ),
}

# What ``--matrix`` reads without ``--merge`` (in bench/results/): the merged tables and
# the single seeds run since, no run twice to one budget. A new seed's file joins here
# (or matches a pattern), then ``make bench-anytime-matrix`` rewrites anytime_matrix.*.
MATRIX_SOURCES = (
    "anytime_b30_matrix.json", "anytime_b100_matrix.json", "anytime_b100_matrix_kde.json",
    "anytime_b300_matrix_kde.json", "anytime_b300our_tpesearch_s[5-9].json",
    "anytime_b300sh_s[89].json", "anytime_b300bohb_s*.json",
    "anytime_w32_matrix.json", "anytime_w32b30_matrix.json", "anytime_w32b100_all.json",
    "anytime_w32b300r_10.json", "anytime_w32b300_dehb.json", "anytime_w32b300_hbkde.json",
    "anytime_w32b300bohb_s*.json", "anytime_b300osh_s*.json", "anytime_w32b300mr3_s*.json",
    "anytime_w32b300tpe_s*.json", "anytime_w32b300ohb_s*.json", "anytime_w32b300osh_s*.json",
)  # fmt: skip

_bench: Any = None  # one surrogate per process


def _lcbench() -> Any:
    global _bench
    if _bench is None:
        from modelhopper.testing import LCBench

        _bench = LCBench()
    return _bench


def sample_curves(task: int) -> dict[str, np.ndarray]:
    """The surrogate's curves of SAMPLE random configurations (seed 0) on the task."""
    import modelhopper as mh

    bench = _lcbench()
    space = mh.Space(bench.space())
    rng = np.random.default_rng(0)
    configs = [bench.config(space.sample(rng)) for _ in range(SAMPLE)]
    return bench.curves(task, configs)


def task_scale(task: int) -> dict[str, float]:
    """FTE seconds, best and worst accuracy of SAMPLE random configurations (seed 0)."""
    curves = sample_curves(task)
    accuracy = curves["val_accuracy"] / 100.0
    return {
        "fte_seconds": float(curves["epoch_seconds"].sum(axis=1).mean()),
        "best": float(accuracy.max()),
        "worst": float(accuracy.min()),
    }


def _procedure(method: str, seed: int, budget: float, n_workers: int) -> Any:
    """The procedure, sized to have work past the budget (the clock stops it)."""
    import modelhopper as mh
    from modelhopper.testing import surrogate_estimator

    space = _lcbench().space()
    policy = "oldest_first" if "oldest first" in method else "longest_remaining"
    order = "any" if "any order" in method else "fixed"
    common = {"metric": "val_accuracy", "direction": "maximize", "seed": seed, "policy": policy,
              "train_order": order}  # fmt: skip
    # Never out of MSTs before the clock stops it (a procedure out of MSTs leaves
    # workers idle): epoch times vary 10x between configurations, so twice what the
    # budget pays for at the mean epoch time.
    full = 2 * math.ceil(budget) + 2 * n_workers  # full trainings
    halving = {"max_epochs": MAX_EPOCHS, "min_epochs": 1, "reduction_factor": 3}
    many = 2 * math.ceil(budget * MAX_EPOCHS) + 4 * n_workers  # as if 1 epoch each
    base = method.split(" (")[0]  # the parenthesis: a policy (common) or replicas (_replicas)
    if base == "mh RandomSearch":
        return mh.RandomSearch(surrogate_estimator, space, n_msts=full, epochs=MAX_EPOCHS, **common)
    if base == "mh TPESearch":
        return mh.TPESearch(surrogate_estimator, space, n_msts=full, epochs=MAX_EPOCHS, **common)
    if base == "mh SuccessiveHalving":  # one bracket spending about the budget
        n = max(n_workers, math.ceil(budget * MAX_EPOCHS / 5.2))
        return mh.SuccessiveHalving(surrogate_estimator, space, n_msts=n, **halving, **common)
    if method.startswith(("mh ASHA", "mh Hyperband")):
        kind = mh.ASHA if method.startswith("mh ASHA") else mh.Hyperband
        sampler = next((s for s in ("kde", "tpe") if f"({s}," in method), "random")
        mode = "stopping" if "stopping" in method else "promotion"
        if "equal epochs" in method:
            halving = {**halving, "bracket_weights": "equal_epochs"}
        if kind is mh.Hyperband:
            order = "random" if "random brackets" in method else "interleaved"
            halving = {**halving, "bracket_order": order}
        return kind(
            surrogate_estimator, space, n_msts=many, sampler=sampler, mode=mode,
            **halving, **common,
        )  # fmt: skip
    if base == "mh PBT":
        population = max(8, 2 * n_workers)
        return mh.PBT(
            surrogate_estimator, space, population_size=population, epochs=MAX_EPOCHS,
            interval=4, **common,
        )  # fmt: skip
    raise ValueError(f"unknown method {method!r}")


def on_surrogate(
    procedure: Any,
    task: int,
    n_workers: int,
    stop_at: float,
    replicas: int | str = 1,
    n_shards: int | None = None,
    shared_validation: bool = False,
) -> Any:
    """Run a procedure on the real engine over the surrogate until ``stop_at`` simulated
    seconds; the executor, which holds what every epoch reported and when."""
    from modelhopper.testing import SimulatedTimeUp, SurrogateExecutor, surrogate_dataset

    executor = SurrogateExecutor(
        task=task, bench=_lcbench(), stop_at=stop_at, replicas=replicas,
        shared_validation=shared_validation,
    )  # fmt: skip
    folder = tempfile.TemporaryDirectory(prefix="anytime-", dir=_memory_folder())
    with folder as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            procedure.fit(
                surrogate_dataset(n_shards or n_workers), n_workers=n_workers, n_shards=n_shards,
                executor=executor,
                store=f"sqlite:///{tmp}/runs.db", run_dir=Path(tmp) / "run", progress=False,
            )  # fmt: skip
        except SimulatedTimeUp:
            pass  # the budget is spent: what finished before stop_at is the run
    return executor


def _memory_folder() -> str | None:
    """A RAM-backed folder for the simulated runs' store and checkpoints, where there is
    one: their fsyncs (a real run's durability) cost ~0.5 ms per visit on this disk and
    measure nothing the benchmark is about."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_modelhopper(method: str, task: int, seed: int, n_workers: int, stop_at: float,
                    budget: float) -> dict[str, Any]:  # fmt: skip
    """One procedure on the real engine; every epoch's (simulated time, accuracy)."""
    started = time.perf_counter()
    procedure = _procedure(method, seed, budget, n_workers)
    replicas = _replicas(method, n_workers)
    n_shards = 4 * n_workers if "4 shards per worker" in method else None
    shared = "shared validation" in method
    executor = on_surrogate(procedure, task, n_workers, stop_at, replicas, n_shards, shared)
    heard = sorted(
        (executor.epoch_times[key], executor.epoch_accuracy[key]) for key in executor.epoch_times
    )
    return {
        "heard": improvements(heard),
        "real_seconds": time.perf_counter() - started,
        "driver_seconds": executor.driver_seconds,
        "visits": len(executor.trace),
        "utilisation": executor.utilisation,  # below 1: visits waited on a holder
    }


def _replicas(method: str, n_workers: int) -> int | str:
    """Copies of each shard a method's name asks for: every worker's ("replicated"), a
    quarter of the workers' ("quarter of data per worker", at least one), else one."""
    if "replicated" in method:
        return "all"
    return max(1, n_workers // 4) if "quarter of data per worker" in method else 1


def run_peer(method: str, task: int, seed: int, n_workers: int, stop_at: float) -> dict[str, Any]:
    from _anytime_peers import PEERS, simulate

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = PEERS[method](_lcbench(), seed)
        heard = simulate(peer, _lcbench(), task, n_workers, stop_at)
    return {"heard": improvements(heard), "real_seconds": time.perf_counter() - started}


def _one(job: tuple[str, int, int, int, float, float]) -> dict[str, Any]:
    method, task, seed, n_workers, stop_at, budget = job
    import logging

    logging.disable(logging.WARNING)  # Syne Tune's and DEHB's notes on every trial
    if method.startswith("mh "):
        out = run_modelhopper(method, task, seed, n_workers, stop_at, budget)
    else:
        out = run_peer(method, task, seed, n_workers, stop_at)
    return {"method": method, "task": task, "seed": seed, "workers": n_workers, **out}


def improvements(heard: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (time, accuracy) points, in time order, where the best accuracy heard rises: all
    a run's regret depends on, small enough to keep in the results file for ``--merge``."""
    kept: list[tuple[float, float]] = []
    for t, accuracy in sorted(heard):
        if kept and accuracy <= kept[-1][1]:
            continue
        if kept and kept[-1][0] == t:
            kept.pop()  # a better one heard at the same moment
        kept.append((t, accuracy))
    return kept


def kept_for(heard: list[tuple[float, float]], moments: list[float]) -> list[tuple[float, float]]:
    """Of a run's improvements, those a table at ``moments`` reads: the last one by each
    moment, and the best of all (the regret's zero is the best any run heard)."""
    last_by = [max((i for i, (t, _) in enumerate(heard) if t <= m), default=None) for m in moments]
    keep = {i for i in last_by if i is not None} | ({len(heard) - 1} if heard else set())
    return [heard[i] for i in sorted(keep)]


def spent_at(scale: dict[str, float], budget: float, n_workers: int) -> float:
    """The simulated time at which ``n_workers`` have spent ``budget`` FTE of a task."""
    return budget * scale["fte_seconds"] / n_workers


def moments(run: dict[str, Any], scales: dict[int, dict[str, float]], budgets: list[float]
            ) -> list[float]:  # fmt: skip
    """The simulated times at which ``run`` has spent each of ``budgets``."""
    return [spent_at(scales[run["task"]], b, run["workers"]) for b in budgets]


def incumbent_at(heard: list[tuple[float, float]], moment: float) -> float:
    """The best accuracy heard by ``moment`` (-inf before the first)."""
    best = -math.inf
    for t, accuracy in heard:
        if t > moment:
            break
        best = max(best, accuracy)
    return best


def regret(incumbent: float, best: float, worst: float) -> float:
    return 1.0 if incumbent == -math.inf else (best - incumbent) / (best - worst)


def summarise(
    runs: list[dict[str, Any]],
    scales: dict[int, dict[str, float]],
    budgets: list[float],
) -> dict[str, Any]:
    """Mean regret, its standard error over seeds and the number of seeds, per workers,
    method and budget. A run that says how far it ran (``budget``, a ``--matrix`` read)
    counts only at budgets up to that (``sized_for``); a cell no run reached is left out."""
    best = {t: max([s["best"]] + [a for r in runs if r["task"] == t for _, a in r["heard"]])
            for t, s in scales.items()}  # fmt: skip
    table: dict[str, Any] = {}
    for n_workers in sorted({r["workers"] for r in runs}):
        table[str(n_workers)] = {}
        for method in dict.fromkeys(r["method"] for r in runs):
            mine = [r for r in runs if r["workers"] == n_workers and r["method"] == method]
            if not mine:
                continue
            row = {}
            for budget in budgets:
                reached = sized_for(mine, budget)
                per_seed = []
                for seed in sorted({r["seed"] for r in reached}):
                    values = []
                    for r in (r for r in reached if r["seed"] == seed):
                        s = scales[r["task"]]
                        moment = spent_at(s, budget, n_workers)
                        inc = incumbent_at(r["heard"], moment)
                        values.append(regret(inc, best[r["task"]], s["worst"]))
                    per_seed.append(statistics.fmean(values))
                if not per_seed:
                    continue
                se = (
                    statistics.stdev(per_seed) / math.sqrt(len(per_seed))
                    if len(per_seed) > 1
                    else 0.0
                )
                row[f"{budget:g}"] = {
                    "mean": statistics.fmean(per_seed), "se": se, "seeds": len(per_seed),
                }  # fmt: skip
            table[str(n_workers)][method] = row
    return table


def verdicts(table: dict[str, Any], budgets: list[float], seeds: bool = False) -> list[str]:
    """modelhopper's procedure vs the best peer implementation of the same algorithm (with
    each side's number of seeds, if ``seeds``)."""
    lines = []
    for n_workers, rows in table.items():
        for ours, peers in SAME_ALGORITHM.items():
            present = [p for p in peers if p in rows]
            if ours not in rows or not present:
                continue
            for budget in budgets:
                key = f"{budget:g}"
                reached = [p for p in present if key in rows[p]]
                if key not in rows[ours] or not reached:  # a --matrix cell not measured
                    continue
                peer = min(reached, key=lambda p: rows[p][key]["mean"])
                lines.append(
                    f"| {n_workers} | {ours} | {peer} | {key} | "
                    + verdict_cells(rows[ours][key], rows[peer][key], seeds)
                )
    return lines


def run_all(one: Callable[[tuple], dict], jobs: list[tuple], n_processes: int) -> list[dict]:
    """Every job's run, in job order, in ``n_processes`` processes (or this one)."""
    if n_processes <= 1:
        return [one(job) for job in jobs]
    with ProcessPoolExecutor(n_processes) as pool:
        return list(pool.map(one, jobs))


def verdict_cells(mine: dict[str, float], theirs: dict[str, float], seeds: bool = False) -> str:
    """Means (with their numbers of seeds, if ``seeds``), gap, twice the combined standard
    error and the verdict, as table cells."""
    noise = 2 * math.hypot(mine["se"], theirs["se"])
    gap = mine["mean"] - theirs["mean"]
    verdict = "no worse" if gap <= noise else "WORSE"
    means = [f"{m['mean']:.4f}" + (f" ({m['seeds']})" if seeds else "") for m in (mine, theirs)]
    return f"{means[0]} | {means[1]} | {gap:+.4f} | {noise:.4f} | {verdict} |"


def write(out: Path, stem: str, payload: dict[str, Any], budgets: list[float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, separators=(",", ":")))
    table = payload["table"]
    lines = [
        "# Anytime performance on the LCBench surrogate",
        "",
        f"Command: `{payload['command']}`; {payload['date']}; tasks {payload['tasks']}; "
        f"seeds {payload['seeds']} ({payload['first_seed']}-{payload['last_seed']}); "
        f"real time {payload['real_seconds']:.0f} s.",
        "",
        *seeds_note(payload),
        *matrix_note(payload),
        "Normalised regret of validation accuracy (0 = the best any method or the random "
        "sample found; 1 = the worst of the sample) at budgets in full-training "
        "equivalents (FTE), mean over tasks and seeds, +- standard error over seeds.",
        "",
    ]
    for n_workers, rows in table.items():
        lines += [f"## {n_workers} workers", "",
                  "| method | " + " | ".join(f"{b:g} FTE" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]  # fmt: skip
        for method, row in rows.items():
            cells = [cell(row.get(f"{b:g}"), payload.get("matrix", False)) for b in budgets]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += verdict_section(
        "## modelhopper vs the best peer implementation of the same algorithm",
        "| workers | ours | best peer | FTE | ours | peer | gap | 2 se | verdict |",
        payload,
    )
    (out / f"{stem}.md").write_text("\n".join(lines))
    if not payload.get("matrix"):  # its curves would change seeds along a line
        _plot(out, stem, payload)


def cell(value: dict[str, float] | None, seeds: bool) -> str:
    """A table cell: mean +- standard error, with its number of seeds in a --matrix
    table; a dash where no run reached the budget."""
    if value is None:
        return "-"
    text = f"{value['mean']:.4f} +- {value['se']:.4f}"
    return f"{text} ({value['seeds']})" if seeds else text


def verdict_section(title: str, header: str, payload: dict[str, Any]) -> list[str]:
    """The markdown of the same-algorithm comparisons and the real seconds per run."""
    return [
        title,
        "",
        "No worse = our mean regret exceeds the peer's by at most twice the combined "
        "standard error.",
        "",
        header,
        "|" + "---|" * header.count(" | ") + "---|",
        *payload["verdicts"],
        "",
        "Real seconds per run (mean): "
        + ", ".join(f"{m} {s:.1f}" for m, s in payload["real_seconds_per_run"].items()),
        "",
        *_utilisation_lines(payload.get("utilisation", {})),
    ]


def _utilisation_lines(utilisation: dict[str, float]) -> list[str]:
    """The utilisation paragraph, where the runs measured it (the multi-objective
    benchmark's do not)."""
    if not utilisation:
        return []
    return [
        "modelhopper's worker utilisation (busy share of the simulated time, mean; below 1: "
        "visits waited for a worker holding their next shard): "
        + ", ".join(f"{m} {u:.3f}" for m, u in utilisation.items()),
        "",
    ]


def _plot(out: Path, stem: str, payload: dict[str, Any]) -> None:
    for n_workers, rows in payload["curves"].items():
        title = f"LCBench surrogate, {n_workers} workers, {len(payload['tasks'])} tasks"
        plot_curves(out / f"{stem}_{n_workers}.png", rows, "normalised regret of val accuracy",
                    title)  # fmt: skip


def plot_curves(path: Path, curves: dict[str, list[dict]], ylabel: str, title: str) -> None:
    """Mean regret against budget, log-log, one line per method (ours solid, peers
    dashed), +- one standard error shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    # Past ten methods the default colour cycle repeats: two lines of one colour.
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
    for i, (method, curve) in enumerate(curves.items()):
        x = [p["budget"] for p in curve]
        y = np.array([p["mean"] for p in curve])
        se = np.array([p["se"] for p in curve])
        style = "-" if method.startswith("mh ") else "--"
        (line,) = ax.plot(x, y, style, color=colours[i % len(colours)], label=method)
        ax.fill_between(x, y - se, y + se, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("budget (full-training equivalents)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # Below the axes, so that it hides no line.
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--up-to", type=float, default=None, metavar="FTE",
                        help="with --merge: read every file's runs up to this budget, "
                        "so files run to different budgets make one table")  # fmt: skip
    parser.add_argument("--matrix", action="store_true",
                        help="read each results file's runs up to the budget it ran to "
                        "(--merge's files, else MATRIX_SOURCES'): one table of every "
                        "worker count, method and budget, each cell with its seeds")  # fmt: skip
    args = with_common_arguments(parser, max_budget=300, stem="anytime").parse_args(argv)
    command = " ".join(["python bench/anytime.py", *(sys.argv[1:] if argv is None else argv)])
    stem = "anytime_smoke" if args.smoke_test else "anytime"
    stem += f"_{args.tag}" if args.tag else ""
    if args.matrix:
        if args.up_to is not None:
            parser.error("--matrix reads every run up to its own budget: leave out --up-to")
        payload = matrix(args.merge or matrix_sources(), command, args.methods)
    elif args.merge:
        payload = merged(args.merge, command, args.methods, args.up_to)
    elif args.up_to is not None:
        parser.error("--up-to reads results files: use it with --merge")
    else:
        payload = measured(args, command)
    write(args.out, stem, payload, payload["budgets"])
    print((args.out / f"{stem}.md").read_text())
    return payload


def with_common_arguments(
    parser: argparse.ArgumentParser, max_budget: float, stem: str
) -> argparse.ArgumentParser:
    """The arguments this benchmark and bench/anytime_mo.py share: what to run, where the
    results go, and --merge."""
    parser.add_argument("--smoke-test", action="store_true", help="1 task, 1 seed, 2 FTE")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed ... first-seed + seeds - 1")  # fmt: skip
    parser.add_argument("--max-budget", type=float, default=max_budget)
    parser.add_argument("--tasks", type=int, nargs="+", default=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=None,
                        help="default: all; with --merge, the methods to keep")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help=f"results go to {stem}_<tag>.*")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="run nothing: one table from these results files' runs "
                        "(e.g. seeds 0-4 and 5-9 run apart)")  # fmt: skip
    return parser


def budgets_up_to(max_budget: float) -> list[float]:
    return [b for b in BUDGETS if b <= max_budget] or [max_budget]


def measured(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run every method, task, seed and worker count the arguments name."""
    if args.smoke_test:
        args.seeds, args.max_budget, args.workers, args.tasks = 1, 2, [4], [TASKS[0]]
    from _anytime_peers import PEERS

    methods = args.methods or [*MH_METHODS, *PEERS]
    started = time.perf_counter()
    scales = {task: task_scale(task) for task in args.tasks}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [
        (method, task, seed, n_workers, spent_at(scales[task], args.max_budget, n_workers),
         args.max_budget)
        for n_workers in args.workers for task in args.tasks for seed in seeds
        for method in methods
    ]  # fmt: skip
    jobs.sort(key=lambda j: -j[3])  # the longest (most workers) first
    runs = run_all(_one, jobs, args.jobs)
    return summary(runs, scales, args.max_budget, command, time.perf_counter() - started)


def merged(
    paths: list[Path], command: str, methods: list[str] | None = None, up_to: float | None = None
) -> dict[str, Any]:
    """One summary of the runs of several results files (of ``methods`` only, if given),
    as if measured in one run: the regret's zero is recomputed over all of them. With
    ``up_to``, files run to that budget or more are read up to it (the zero stays the
    best any of their runs heard, at any budget)."""
    payloads, runs, max_budget = runs_to_merge(paths, methods, up_to)
    scales = {int(t): s for payload in payloads for t, s in payload["scales"].items()}
    real = sum(payload["real_seconds"] for payload in payloads)
    merged_from = "; ".join(f"`{payload['command']}`" for payload in payloads)
    grid = None if up_to is None else common_grid(paths, payloads, up_to)
    return summary(runs, scales, max_budget, f"{command} (of {merged_from})", real, grid)


def matrix(paths: list[Path], command: str, methods: list[str] | None = None) -> dict[str, Any]:
    """One table of every worker count, method and budget in these results files, each
    run read up to the budget its file ran to (a cell counts the seeds that reached it),
    so files of different budgets, seeds and workers make the benchmark's whole matrix.
    Where files hold runs of one method, task, seed and workers to different budgets, a
    cell reads the one run to the smallest budget that reaches it (``sized_for``); one
    run in a file and in a merge of it (the same measured seconds) is read once, to the
    larger budget. The regret's zero is the best any run heard."""
    payloads = [json.loads(path.read_text()) for path in paths]
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for path, payload in zip(paths, payloads, strict=True):
        check_keeps_runs(path, payload)
        for budget in budgets_up_to(payload["max_budget"]):
            check_kept_at(path, payload, budget)
        for run in payload["runs"]:
            run = {**run, "budget": run.get("budget", payload["max_budget"])}
            key = (run["method"], run["task"], run["seed"], run["workers"])
            by_key.setdefault(key, []).append(run)
    runs = [run for key, same in by_key.items() for run in distinct_runs(same, key)]
    runs = of_methods(runs, methods)
    from _anytime_peers import PEERS

    known = [*PEERS, *MH_METHODS]  # the tables' rows: the peers, then ours, as listed
    runs.sort(key=lambda r: known.index(r["method"]) if r["method"] in known else len(known))
    budgets = sorted({b for p in payloads for b in budgets_up_to(p["max_budget"])})
    scales = {int(t): s for payload in payloads for t, s in payload["scales"].items()}
    real = sum(run["real_seconds"] for run in runs)  # merged files share runs: not theirs
    read = f"{command} (of {', '.join(path.name for path in paths)})"
    whole = summary(runs, scales, max(budgets), read, real,
                    grid=budgets, budgets=budgets, matrix=True)  # fmt: skip
    return whole


def matrix_sources(folder: Path = RESULTS) -> list[Path]:
    """``MATRIX_SOURCES``' files: a name must exist, a pattern may match none yet."""
    paths = []
    for pattern in MATRIX_SOURCES:
        found = sorted(folder.glob(pattern))
        if not found and not any(c in pattern for c in "*?["):
            raise SystemExit(f"{folder / pattern} (in MATRIX_SOURCES) is missing")
        paths += found
    return paths


def distinct_runs(same: list[dict[str, Any]], key: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The runs of one method, task, seed and workers (``key``) that differ: copies of one
    run (the same measured seconds; a merge read it to a lower budget) become the one read
    furthest. Two different runs to one budget stop: which would a cell read?"""
    furthest: dict[float, dict[str, Any]] = {}
    for run in same:
        copy = furthest.get(run["real_seconds"])
        if copy is None or run["budget"] > copy["budget"]:
            furthest[run["real_seconds"]] = run
    runs = sorted(furthest.values(), key=lambda r: r["budget"])
    for one, other in itertools.pairwise(runs):
        if one["budget"] == other["budget"]:
            raise SystemExit(
                f"run {key} (method, task, seed, workers) is in more than one file to "
                f"{one['budget']:g} FTE; leave one of them out"
            )
    return runs


def sized_for(runs: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """Of ``runs`` (one method and worker count), those that reached ``budget``, one per
    task and seed: the run to the smallest budget (a procedure sized for 100 FTE is read
    at 100 FTE rather than one sized for 300). Runs without a budget ran to every one."""
    chosen: dict[tuple[int, int], dict[str, Any]] = {}
    for run in runs:
        reach, key = run.get("budget", math.inf), (run["task"], run["seed"])
        if reach >= budget and (key not in chosen or reach < chosen[key]["budget"]):
            chosen[key] = run
    return list(chosen.values())


def check_keeps_runs(path: Path, payload: dict[str, Any]) -> None:
    if any("heard" not in run for run in payload.get("runs", [{}])):
        raise SystemExit(
            f"{path} keeps no run's points (written before --merge existed); "
            "run it again to merge it"
        )


def check_kept_at(path: Path, payload: dict[str, Any], budget: float) -> set[float]:
    """The budgets at which ``payload`` kept its runs' incumbents (its curves'), checked
    to include ``budget``: there a merge reads each run exactly."""
    kept = {point["budget"] for rows in payload["curves"].values() for curve in rows.values()
            for point in curve}  # fmt: skip
    if budget not in kept:
        readable = ", ".join(f"{b:g}" for b in sorted(kept))
        raise SystemExit(f"{path} kept its runs' incumbents at {readable} FTE only; "
                         f"it cannot be read at {budget:g} FTE")  # fmt: skip
    return kept


def common_grid(paths: list[Path], payloads: list[dict[str, Any]], up_to: float) -> list[float]:
    """The budgets up to ``up_to`` at which every file kept its runs' incumbents (its
    curves' budgets): there a capped merge reads each run exactly. ``up_to`` must be one."""
    try:
        kept = [check_kept_at(p, data, up_to) for p, data in zip(paths, payloads, strict=True)]
    except SystemExit as missing:
        raise SystemExit(f"{missing}: --up-to must be one of those of every file") from None
    return sorted(b for b in set.intersection(*kept) if b <= up_to)


def runs_to_merge(
    paths: list[Path], methods: list[str] | None = None, up_to: float | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """The results files, their runs (of ``methods`` only, if given) and their budget,
    checked to be mergeable: each keeps its runs' points, all ran to one budget (or, with
    ``up_to``, each to at least that one, which is then the budget), and no run (method,
    task, seed, workers) appears twice. Anything else stops with what to do instead."""
    payloads = [json.loads(path.read_text()) for path in paths]
    for path, payload in zip(paths, payloads, strict=True):
        check_keeps_runs(path, payload)
        if payload.get("matrix"):
            raise SystemExit(
                f"{path} is a --matrix table (its runs ran to different budgets): --merge "
                "the files it was read from, or read it with --matrix"
            )
    budgets = {payload["max_budget"] for payload in payloads}
    if up_to is not None:
        short = [f"{path} ({p['max_budget']:g})" for path, p in zip(paths, payloads, strict=True)
                 if p["max_budget"] < up_to]  # fmt: skip
        if short:
            raise SystemExit(f"--up-to {up_to:g} FTE is past the budget these files ran to: "
                             f"{', '.join(short)}; lower it or leave those files out")  # fmt: skip
        budgets = {up_to}
    if len(budgets) > 1:
        raise SystemExit(f"the files ran to different budgets {sorted(budgets)}; merge "
                         "files of one --max-budget")  # fmt: skip
    runs = of_methods([run for payload in payloads for run in payload["runs"]], methods)
    seen: set[tuple[Any, ...]] = set()
    for run in runs:
        key = (run["method"], run["task"], run["seed"], run["workers"])
        if key in seen:
            raise SystemExit(f"run {key} (method, task, seed, workers) is in more than one "
                             "file; merge files of different seeds, tasks or methods")  # fmt: skip
        seen.add(key)
    return payloads, runs, budgets.pop()


def matrix_note(payload: dict[str, Any]) -> list[str]:
    """What a --matrix table's cells count (else nothing)."""
    if not payload.get("matrix"):
        return []
    return [
        "Each run is read up to the budget its file ran to: a cell's number in brackets is "
        "the seeds that reached that budget, a dash a budget no run of the method reached "
        "(where files hold one method, task and seed to different budgets, a cell reads the "
        "run to the smallest budget that reaches it: the procedure sized for it).",
        "",
    ]


def of_methods(runs: list[dict[str, Any]], methods: list[str] | None) -> list[dict[str, Any]]:
    """The runs of ``methods`` (all, if None); a method with no run stops the merge."""
    if methods is None:
        return runs
    missing = sorted(set(methods) - {run["method"] for run in runs})
    if missing:
        raise SystemExit(f"no run of {missing} in these files; --methods names what to "
                         "merge, as the files' tables name it")  # fmt: skip
    return [run for run in runs if run["method"] in methods]


def seed_counts(runs: list[dict[str, Any]]) -> dict[str, int]:
    """How many seeds each method ran (merged files may hold different seeds of each)."""
    methods = dict.fromkeys(run["method"] for run in runs)
    return {m: len({run["seed"] for run in runs if run["method"] == m}) for m in methods}


def seeds_note(payload: dict[str, Any]) -> list[str]:
    """Lines naming each method's number of seeds, where they differ (else none): the
    header's seeds are then those of all runs together."""
    counts = payload.get("seeds_per_method", {})
    if len(set(counts.values())) <= 1 or payload.get("matrix"):  # its cells count them
        return []
    listed = ", ".join(f"{method} {n}" for method, n in counts.items())
    return [f"Seeds per method (the merged files ran different seeds of each): {listed}.", ""]


def summary(
    runs: list[dict[str, Any]],
    scales: dict[int, dict[str, float]],
    max_budget: float,
    command: str,
    real_seconds: float,
    grid: list[float] | None = None,
    budgets: list[float] | None = None,
    matrix: bool = False,
) -> dict[str, Any]:
    """The results file's contents: regret tables (at ``budgets``, by default those of
    ``BUDGETS`` up to ``max_budget``), curves (at ``grid``'s budgets, by default 16 from 1
    FTE to ``max_budget`` and the tables') and verdicts of ``runs``, and the runs
    themselves (each with its incumbents, so files can be merged later). ``matrix``: the
    runs were read each to its own budget (``matrix``); verdicts name their seeds."""
    budgets = budgets or budgets_up_to(max_budget)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    if grid is None:
        grid = sorted({*budgets, *np.geomspace(1, max_budget, 16).round(2).tolist()})
    curves_table = summarise(runs, scales, grid)
    table = {w: {m: {f"{b:g}": row[f"{b:g}"] for b in budgets if f"{b:g}" in row}
                 for m, row in rows.items()}
             for w, rows in curves_table.items()}  # fmt: skip
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "tasks": sorted({r["task"] for r in runs}),
        "seeds": len({r["seed"] for r in runs}),
        "first_seed": min(r["seed"] for r in runs),
        "last_seed": max(r["seed"] for r in runs),
        "seeds_per_method": seed_counts(runs),
        "workers": sorted({r["workers"] for r in runs}),
        "max_budget": max_budget,
        "budgets": budgets,
        "scales": {str(t): s for t, s in scales.items()},
        "table": table,
        "curves": {
            w: {
                m: [{"budget": b, **row[f"{b:g}"]} for b in grid if f"{b:g}" in row]
                for m, row in rows.items()
            }
            for w, rows in curves_table.items()
        },  # fmt: skip
        "verdicts": verdicts(table, budgets, seeds=matrix),
        "real_seconds": real_seconds,
        "real_seconds_per_run": {
            m: statistics.fmean(r["real_seconds"] for r in runs if r["method"] == m)
            for m in methods
        },
        "utilisation": {
            m: statistics.fmean(r["utilisation"] for r in runs if r["method"] == m)
            for m in methods
            if m.startswith("mh ")
        },
        # each run's improvements at the moments the tables read: enough to merge this
        # file with another of the same budget, exactly
        "runs": [{**r, "heard": kept_for(r["heard"], moments(r, scales, grid))} for r in runs],
        **({"matrix": True} if matrix else {}),
    }


if __name__ == "__main__":
    main()
