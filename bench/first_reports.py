"""How soon a run hears its first epoch report, on the LCBench surrogate: modelhopper's
ASHA on the real engine (one copy of the data in a fixed order, in any order, and every
worker holding every shard) against Syne Tune's ASHA (task-parallel: a worker trains a
whole configuration).

    python bench/first_reports.py [--smoke-test] [--seeds N] [--workers W] [--tasks T ...]

A run stops at 1 FTE (``bench/anytime.py``'s unit: the mean simulated time of training
one random configuration for 52 epochs, over the workers). Reported: the simulated
time of the first epoch report in FTE (1.0 where none came by then), mean over seeds
per task, and over tasks. Under MOP an MST's first epoch visits every worker holding
a shard, and waits at each hop while the worker runs another MST's visit; this table
is what that costs at the start of a run. Writes bench/results/first_reports.json and
first_reports.md (first_reports_smoke.* with --smoke-test).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from anytime import RESULTS, TASKS, run_modelhopper, run_peer, spent_at, task_scale

METHODS = (
    "mh ASHA (stopping, oldest first)",
    "mh ASHA (stopping, oldest first, any order)",
    "mh ASHA (stopping, oldest first, replicated)",
    "Syne Tune ASHA",
)


def first_report(method: str, task: int, seed: int, n_workers: int, one_fte: float) -> float:
    """FTE spent when the run heard its first epoch report (1.0: none by 1 FTE);
    ``one_fte``: the simulated time at which the workers have spent 1 FTE of the task."""
    if method.startswith("mh "):
        heard = run_modelhopper(method, task, seed, n_workers, one_fte, 1.0)["heard"]
    else:
        heard = run_peer(method, task, seed, n_workers, one_fte)["heard"]
    return min(heard[0][0] / one_fte, 1.0) if heard else 1.0


def measure(tasks: list[int], seeds: int, n_workers: int) -> dict[str, dict[str, float]]:
    """{method: {task (str): mean first report over seeds, "mean": over tasks}}."""
    # the surrogate's curves of a random sample, once per task, not once per run
    one_fte = {task: spent_at(task_scale(task), 1.0, n_workers) for task in tasks}
    table: dict[str, dict[str, float]] = {}
    for method in METHODS:
        per_task = {
            str(task): statistics.fmean(
                first_report(method, task, seed, n_workers, one_fte[task]) for seed in range(seeds)
            )
            for task in tasks
        }
        table[method] = {**per_task, "mean": statistics.fmean(per_task.values())}
    return table


def markdown(payload: dict[str, Any]) -> str:
    tasks = payload["tasks"]
    header = "| method | " + " | ".join(str(t) for t in tasks) + " | mean |"
    rows = [
        f"| {m} | " + " | ".join(f"{row[str(t)]:.3f}" for t in tasks) + f" | {row['mean']:.3f} |"
        for m, row in payload["table"].items()
    ]
    return "\n".join([
        "# First epoch report on the LCBench surrogate",
        "",
        f"Command: `{payload['command']}`; {payload['workers']} workers; seeds "
        f"{payload['seeds']}; real time {payload['real_seconds']:.0f} s.",
        "",
        "FTE spent when the first epoch report arrived (1.000: none by 1 FTE), mean over "
        "seeds; columns are LCBench tasks.",
        "",
        header,
        "|" + "---|" * (len(tasks) + 2),
        *rows,
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="1 task, 1 seed")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, nargs="+", default=list(TASKS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.tasks = 1, [TASKS[0]]
    logging.disable(logging.WARNING)  # Syne Tune's notes on every trial
    started = time.perf_counter()
    table = measure(args.tasks, args.seeds, args.workers)
    given = sys.argv[1:] if argv is None else argv
    payload = {
        "command": " ".join(["python bench/first_reports.py", *given]),
        "workers": args.workers, "seeds": args.seeds, "tasks": args.tasks, "table": table,
        "real_seconds": time.perf_counter() - started,
    }  # fmt: skip
    stem = "first_reports_smoke" if args.smoke_test else "first_reports"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(payload))
    print(markdown(payload))
    return payload


if __name__ == "__main__":
    main()
