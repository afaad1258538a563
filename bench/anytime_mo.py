"""Multi-objective anytime performance on the LCBench surrogate: validation accuracy vs
training seconds per epoch, modelhopper's multi-objective ASHA on the real engine side by
side with Syne Tune's MOASHA and Optuna's NSGA-II and multi-objective TPE.

    python bench/anytime_mo.py [--smoke-test] [--seeds N] [--first-seed S] [--max-budget B]
                               [--workers W] [--tasks T ...] [--methods M ...] [--jobs J]
    python bench/anytime_mo.py --merge A.json B.json --tag AB

Every method searches LCBench's space for models that are accurate *and* cheap to train:
objectives ``val_accuracy`` (maximise) and ``train_seconds`` (minimise; the surrogate's
predicted seconds of the epoch, which every modelhopper run reports as a metric). Each
evaluation a method hears (an epoch of a configuration) is a point (accuracy, seconds).
Quality at simulated time t is the hypervolume of the points heard by t, in a box
normalised per task by a fixed sample of random configurations (bench/anytime.py's
``SAMPLE``): accuracy from the sample's worst to its best (or the best anything found),
seconds from the sample's fastest epoch to its slowest; the reference point is (worst
accuracy, slowest epoch). Reported as hypervolume regret, 1 - HV / HV*, where HV* is the
hypervolume of everything the sample and every method heard on the task: 0 = as good a
front as any seen, 1 = nothing inside the box. Mean over tasks and seeds, +- standard
error over seeds, at budgets in full-training equivalents (as bench/anytime.py).

modelhopper runs on the real driver, scheduler and store (``SurrogateExecutor``); the
peers on bench/_anytime_peers.py's simulation of the same cost model. Optuna's pruners
do not support several objectives, so its samplers train each configuration fully (52
epochs) and hear every epoch; Syne Tune's MOASHA stops trials at rungs by non-dominated
sorting, as ours promotes. Writes bench/results/anytime_mo.{json,md,png}
(anytime_mo_<tag>.* with --tag, anytime_mo_smoke.* with --smoke-test). The JSON keeps
each run's fronts at the moments the tables read, so a long measurement can be split
(e.g. ``--seeds 5`` and ``--seeds 5 --first-seed 5``) and ``--merge`` makes the one table
both would have made in one run (HV* is recomputed over all of them).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from anytime import (  # noqa: E402
    MAX_EPOCHS,
    TASKS,
    _lcbench,
    budgets_up_to,
    on_surrogate,
    plot_curves,
    run_all,
    runs_to_merge,
    sample_curves,
    seed_counts,
    seeds_note,
    verdict_cells,
    verdict_section,
    with_common_arguments,
)

OBJECTIVES = {"val_accuracy": "maximize", "train_seconds": "minimize"}
MH_METHODS = (
    "mh MO-ASHA (stopping, oldest first)",
    "mh MO-ASHA (promotion, oldest first)",
    "mh MO-Hyperband (stopping, oldest first)",
    "mh RandomSearch",
)
# The peer implementation of the same algorithm as ours (Syne Tune's MOASHA stops
# trials at rungs: our stopping mode; with brackets > 1, asynchronous Hyperband).
SAME_ALGORITHM = {
    "mh MO-ASHA (stopping, oldest first)": "Syne Tune MOASHA",
    "mh MO-Hyperband (stopping, oldest first)": "Syne Tune MO-Hyperband",
}

Point = tuple[float, float, float]  # (simulated time, val_accuracy, epoch seconds)


def task_box(task: int) -> dict[str, Any]:
    """FTE seconds and the normalising box from SAMPLE random configurations (seed 0)."""
    curves = sample_curves(task)
    accuracy = curves["val_accuracy"] / 100.0
    seconds = curves["epoch_seconds"]
    return {
        "fte_seconds": float(seconds.sum(axis=1).mean()),
        "best": float(accuracy.max()),
        "worst": float(accuracy.min()),
        "fastest": float(seconds.min()),
        "slowest": float(seconds.max()),
        # the sample's own front (every epoch a point), for HV*
        "sample_points": _front(list(zip(accuracy.ravel(), seconds.ravel(), strict=True))),
    }


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (accuracy up, seconds down) points, by seconds ascending."""
    front: list[tuple[float, float]] = []
    for accuracy, seconds in sorted(points, key=lambda p: (p[1], -p[0])):
        if not front or accuracy > front[-1][0]:
            front.append((float(accuracy), float(seconds)))
    return front


def fronts_kept(heard: list[Point], moments: list[float]) -> list[Point]:
    """Of a run's points, those on its front at one of ``moments`` or at its end: the
    hypervolume by each moment, the box and HV* are the same from these as from all."""
    ordered = sorted(heard)  # by time: of two equal points, the first heard is kept
    kept: set[Point] = set()
    for moment in [*moments, math.inf]:
        by_then = [(a, s) for t, a, s in ordered if t <= moment]
        front = set(_front(by_then))
        first_of = {}
        for point in ordered:
            if point[0] <= moment and (point[1], point[2]) in front:
                first_of.setdefault((point[1], point[2]), point)
        kept.update(first_of.values())
    return sorted(kept)


def hypervolume(points: list[tuple[float, float]], box: dict[str, Any]) -> float:
    """Area the points dominate inside the box, normalised to [0, 1] on both axes."""
    span_a = max(box["best"], box["top"]) - box["worst"]
    span_s = box["slowest"] - box["fastest"]
    area, reach = 0.0, 0.0  # sweep by seconds ascending; reach = best accuracy so far
    front = _front(points)
    for i, (accuracy, seconds) in enumerate(front):
        a = min(max((accuracy - box["worst"]) / span_a, 0.0), 1.0)
        s = min(max((seconds - box["fastest"]) / span_s, 0.0), 1.0)
        nxt = front[i + 1][1] if i + 1 < len(front) else box["slowest"]
        s_next = min(max((nxt - box["fastest"]) / span_s, 0.0), 1.0)
        reach = max(reach, a)
        area += reach * (s_next - s)
    return area


def _procedure(method: str, seed: int, budget: float, n_workers: int) -> Any:
    import modelhopper as mh
    from modelhopper.testing import surrogate_estimator

    space = _lcbench().space()
    common: dict[str, Any] = {"objectives": OBJECTIVES, "seed": seed}
    if "oldest first" in method:
        common["policy"] = "oldest_first"
    many = 2 * math.ceil(budget * MAX_EPOCHS) + 4 * n_workers
    if method == "mh RandomSearch":
        full = 2 * math.ceil(budget) + 2 * n_workers
        return mh.RandomSearch(surrogate_estimator, space, n_msts=full, epochs=MAX_EPOCHS,
                               **common)  # fmt: skip
    kind = mh.ASHA if method.startswith("mh MO-ASHA") else mh.Hyperband
    mode = "stopping" if "stopping" in method else "promotion"
    return kind(
        surrogate_estimator, space, n_msts=many, max_epochs=MAX_EPOCHS, min_epochs=1,
        reduction_factor=3, mode=mode, **common,
    )  # fmt: skip


def run_modelhopper(method: str, task: int, seed: int, n_workers: int, stop_at: float,
                    budget: float) -> dict[str, Any]:  # fmt: skip
    started = time.perf_counter()
    executor = on_surrogate(_procedure(method, seed, budget, n_workers), task, n_workers, stop_at)
    heard = sorted(
        (t, executor.epoch_accuracy[key], executor.epoch_seconds[key])
        for key, t in executor.epoch_times.items()
    )
    return {"heard": heard, "real_seconds": time.perf_counter() - started}


def run_peer(method: str, task: int, seed: int, n_workers: int, stop_at: float) -> dict[str, Any]:
    from _anytime_peers import MO_PEERS, simulate

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = MO_PEERS[method](_lcbench(), seed)
        heard = simulate(peer, _lcbench(), task, n_workers, stop_at, with_seconds=True)
    return {"heard": heard, "real_seconds": time.perf_counter() - started}


def _one(job: tuple[str, int, int, int, float, float]) -> dict[str, Any]:
    method, task, seed, n_workers, stop_at, budget = job
    import logging

    logging.disable(logging.WARNING)
    if method.startswith("mh "):
        out = run_modelhopper(method, task, seed, n_workers, stop_at, budget)
    else:
        out = run_peer(method, task, seed, n_workers, stop_at)
    return {"method": method, "task": task, "seed": seed, "workers": n_workers, **out}


def summarise(
    runs: list[dict[str, Any]], boxes: dict[int, dict[str, Any]], budgets: list[float]
) -> tuple[dict[str, Any], dict[int, float]]:
    """Mean hypervolume regret +- s.e. over seeds, per method and budget; HV* per task."""
    best_hv = {}
    for task, box in boxes.items():
        heard = [(a, s) for r in runs if r["task"] == task for _, a, s in r["heard"]]
        box["top"] = max([box["best"], *(a for a, _ in heard)])
        best_hv[task] = hypervolume([*box["sample_points"], *heard], box)
    table: dict[str, Any] = {}
    n_workers = runs[0]["workers"]
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        row = {}
        for budget in budgets:
            per_seed = []
            for seed in sorted({r["seed"] for r in mine}):
                values = []
                for r in (r for r in mine if r["seed"] == seed):
                    box = boxes[r["task"]]
                    moment = budget * box["fte_seconds"] / n_workers
                    points = [(a, s) for t, a, s in r["heard"] if t <= moment]
                    values.append(1.0 - hypervolume(points, box) / best_hv[r["task"]])
                per_seed.append(statistics.fmean(values))
            se = statistics.stdev(per_seed) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else 0
            row[f"{budget:g}"] = {"mean": statistics.fmean(per_seed), "se": se}
        table[method] = row
    return table, best_hv


def verdicts(table: dict[str, Any], budgets: list[float]) -> list[str]:
    lines = []
    for ours, peer in SAME_ALGORITHM.items():
        if ours not in table or peer not in table:
            continue
        for budget in budgets:
            key = f"{budget:g}"
            lines.append(
                f"| {ours} | {peer} | {key} | " + verdict_cells(table[ours][key], table[peer][key])
            )
    return lines


def write(out: Path, stem: str, payload: dict[str, Any], budgets: list[float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, separators=(",", ":")))
    lines = [
        "# Multi-objective anytime performance on the LCBench surrogate",
        "",
        f"Command: `{payload['command']}`; {payload['date']}; {payload['workers']} workers; "
        f"tasks {payload['tasks']}; seeds {payload['seeds']} "
        f"({payload['first_seed']}-{payload['last_seed']}); real time "
        f"{payload['real_seconds']:.0f} s.",
        "",
        *seeds_note(payload),
        "Objectives: val_accuracy (maximise), train_seconds per epoch (minimise). "
        "Hypervolume regret 1 - HV/HV* (0 = the best front seen on the task), mean over "
        "tasks and seeds, +- standard error over seeds; budgets in full-training "
        "equivalents (FTE).",
        "",
        "| method | " + " | ".join(f"{b:g} FTE" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for method, row in payload["table"].items():
        cells = [f"{row[f'{b:g}']['mean']:.4f} +- {row[f'{b:g}']['se']:.4f}" for b in budgets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [""] + verdict_section(
        "## modelhopper vs the peer implementation of the same algorithm",
        "| ours | peer | FTE | ours | peer | gap | 2 se | verdict |",
        payload,
    )
    (out / f"{stem}.md").write_text("\n".join(lines))
    _plot(out, stem, payload)


def _plot(out: Path, stem: str, payload: dict[str, Any]) -> None:
    title = f"LCBench surrogate, {payload['workers']} workers, {len(payload['tasks'])} tasks"
    plot_curves(out / f"{stem}.png", payload["curves"],
                "hypervolume regret (accuracy vs epoch seconds)", title)  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    args = with_common_arguments(parser, max_budget=30, stem="anytime_mo").parse_args(argv)
    command = " ".join(["python bench/anytime_mo.py", *(sys.argv[1:] if argv is None else argv)])
    stem = "anytime_mo_smoke" if args.smoke_test else "anytime_mo"
    stem += f"_{args.tag}" if args.tag else ""
    payload = merged(args.merge, command, args.methods) if args.merge else measured(args, command)
    write(args.out, stem, payload, budgets_up_to(payload["max_budget"]))
    print((args.out / f"{stem}.md").read_text())
    return payload


def measured(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run every method, task and seed the arguments name."""
    if args.smoke_test:
        args.seeds, args.max_budget, args.tasks = 1, 2, [TASKS[0]]
    from _anytime_peers import MO_PEERS

    methods = args.methods or [*MH_METHODS, *MO_PEERS]
    started = time.perf_counter()
    boxes = {task: task_box(task) for task in args.tasks}
    jobs = [
        (method, task, seed, args.workers,
         args.max_budget * boxes[task]["fte_seconds"] / args.workers, args.max_budget)
        for task in args.tasks
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for method in methods
    ]  # fmt: skip
    runs = run_all(_one, jobs, args.jobs)
    return summary(runs, boxes, args.max_budget, command, time.perf_counter() - started)


def merged(paths: list[Path], command: str, methods: list[str] | None = None) -> dict[str, Any]:
    """One summary of several results files' runs (of ``methods`` only, if given), as if
    measured in one run."""
    payloads, runs, max_budget = runs_to_merge(paths, methods)
    if len({run["workers"] for run in runs}) > 1:
        raise SystemExit("the files ran on different numbers of workers; merge files of one "
                         "--workers")  # fmt: skip
    boxes = {task: task_box(task) for task in sorted({run["task"] for run in runs})}
    real = sum(payload["real_seconds"] for payload in payloads)
    merged_from = "; ".join(f"`{payload['command']}`" for payload in payloads)
    return summary(runs, boxes, max_budget, f"{command} (of {merged_from})", real)


def summary(
    runs: list[dict[str, Any]],
    boxes: dict[int, dict[str, Any]],
    max_budget: float,
    command: str,
    real_seconds: float,
) -> dict[str, Any]:
    """The results file's contents: hypervolume regret tables, curves and verdicts of
    ``runs``, and the runs themselves with their fronts, so files can be merged later."""
    budgets = budgets_up_to(max_budget)
    grid = sorted({*budgets, *np.geomspace(1, max_budget, 12).round(2).tolist()})
    curves, best_hv = summarise(runs, boxes, grid)
    table = {m: {f"{b:g}": row[f"{b:g}"] for b in budgets} for m, row in curves.items()}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    n_workers = runs[0]["workers"]
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "tasks": sorted({r["task"] for r in runs}),
        "seeds": len({r["seed"] for r in runs}),
        "first_seed": min(r["seed"] for r in runs),
        "last_seed": max(r["seed"] for r in runs),
        "seeds_per_method": seed_counts(runs),
        "workers": n_workers,
        "max_budget": max_budget,
        "best_hypervolume": {str(t): v for t, v in best_hv.items()},
        "table": table,
        "curves": {m: [{"budget": b, **row[f"{b:g}"]} for b in grid] for m, row in curves.items()},
        "verdicts": verdicts(table, budgets),
        "real_seconds": real_seconds,
        "real_seconds_per_run": {
            m: statistics.fmean(r["real_seconds"] for r in runs if r["method"] == m)
            for m in methods
        },
        # each run's fronts at the moments the tables read: enough to merge this file
        # with another of the same budget and workers, exactly
        "runs": [{**r, "heard": _kept(r, boxes[r["task"]], n_workers, grid)} for r in runs],
    }


def _kept(run: dict[str, Any], box: dict[str, Any], n_workers: int, grid: list[float]
          ) -> list[Point]:  # fmt: skip
    moments = [budget * box["fte_seconds"] / n_workers for budget in grid]
    return fronts_kept([tuple(point) for point in run["heard"]], moments)


if __name__ == "__main__":
    main()
