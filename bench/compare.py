"""MOP against task and data parallelism: one workload, several systems, one table.

    python bench/compare.py                      # full size (~45 min of 2 cores)
    python bench/compare.py --smoke-test         # tiny size, for CI
    python bench/compare.py --systems sequential,mop_local,ddp

Workload: Fashion-MNIST (the official 60,000 training images as training data,
the official 10,000 test images as validation), 8 MSTs of bench/mop_efficiency.py's
small CNN (lr x batch size x L2), 3 epochs, 2 workers of 1 core (torch threads = 1
in every process). Systems (bench/_compare_systems.py), each run in a fresh
process of its own: sequential (one process, the MSTs one after another),
modelhopper MOP (LocalExecutor; RayExecutor when Ray is installed), Ray Tune
(``Tuner``, ``tune.with_parameters`` for the data, 2 trials of 1 CPU), PyTorch
DDP (gloo, one MST at a time on both workers) and model averaging (each worker
trains on its half for an epoch, then the weights are averaged).

Figures, the same definition for every system:
- wall: seconds of the system's run with the data already in memory, from
  starting its workers (ray.init, process spawn, sharding) to the last MST
  evaluated and everything shut down;
- pure training seconds: the seconds measured inside ``train_pass`` and
  ``evaluate_pass`` (modelhopper.estimator, the same passes in every system), summed
  over the system's processes; ideal = that / 2 workers; efficiency = ideal / wall.
  "Efficiency (sequential work)" divides the *sequential* run's pure seconds / 2
  by the wall instead: the same yardstick of work for every system;
- peak memory: each process's peak RSS (VmHWM, or the ru_maxrss it reports),
  summed over every process of the run (runner, workers, framework daemons);
- data bytes resident in each worker and in total (with Ray Tune's object store copy);
- bytes communicated: MOP hop bytes, DDP gradient buckets (+ the initial weight
  broadcast and the metric sums), averaged weights, or the data Tune trials fetched;
- final validation accuracy of each MST and its gap to the sequential run of the
  same MST (same seed, so the same initial weights).
Writes bench/results/compare.json, .md and .png (``_smoke`` with --smoke-test).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SYSTEMS = ("sequential", "mop_local", "mop_ray", "ray_tune", "ddp", "model_averaging")
NEEDS_RAY = ("mop_ray", "ray_tune")
LABELS = {
    "sequential": "sequential (1 process)",
    "mop_local": "modelhopper MOP (LocalExecutor)",
    "mop_ray": "modelhopper MOP (RayExecutor)",
    "ray_tune": "Ray Tune (task parallel)",
    "ddp": "PyTorch DDP (data parallel)",
    "model_averaging": "model averaging (data parallel)",
}
FULL = {"n_msts": 8, "epochs": 3, "n_train": 60_000, "n_val": 10_000}
SMOKE = {"n_msts": 2, "epochs": 1, "n_train": 2_000, "n_val": 500}
MB = 1e6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny size, for CI")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {', '.join(SYSTEMS)} (default: all)",
    )
    for name in FULL:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names:
        parser.error(f"--systems takes names from {', '.join(SYSTEMS)}, got {args.systems!r}")
    args.systems = [s for s in SYSTEMS if s in names]  # the table's order
    return args


def run_one(name: str, cfg: dict, tmp: Path) -> dict[str, Any]:
    """Run one system in a fresh Python process, so its memory peaks are its own."""
    config, out, log = tmp / f"{name}.cfg.json", tmp / f"{name}.json", tmp / f"{name}.log"
    config.write_text(json.dumps({**cfg, "tmp": str(tmp / name)}))
    (tmp / name).mkdir()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as f:
        done = subprocess.run(
            [sys.executable, __file__, "--run-system", name, str(config), str(out)],
            stdout=f, stderr=subprocess.STDOUT, env=env, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"system {name} failed (exit {done.returncode}):\n{log.read_text()[-4000:]}"
        )
    return json.loads(out.read_text())


def summarise(rows: list[dict], workers: int) -> None:
    """Add the derived figures (ideal, efficiency, data totals, accuracy gaps) in place."""
    reference = next((r for r in rows if r["system"] == "sequential"), None)
    seq_acc = {m["id"]: m["val_accuracy"] for m in reference["msts"]} if reference else {}
    for r in rows:
        r["label"] = LABELS[r["system"]]
        r["ideal_seconds"] = r["compute_seconds"] / workers
        r["efficiency"] = r["ideal_seconds"] / r["wall_seconds"]
        r["efficiency_sequential_work"] = (
            reference["compute_seconds"] / workers / r["wall_seconds"] if reference else None
        )
        r["data_bytes_total"] = sum(r["data_bytes_per_worker"]) + r.get("data_bytes_shared", 0)
        accs = [m["val_accuracy"] for m in r["msts"]]
        r["mean_val_accuracy"] = sum(accs) / len(accs)
        r["best_val_accuracy"] = max(accs)
        for m in r["msts"]:
            m["gap_to_sequential"] = m["val_accuracy"] - seq_acc[m["id"]] if seq_acc else None
        gaps = [m["gap_to_sequential"] for m in r["msts"] if m["gap_to_sequential"] is not None]
        r["mean_gap_to_sequential"] = sum(gaps) / len(gaps) if gaps else None
        r["max_abs_gap_to_sequential"] = max(map(abs, gaps)) if gaps else None


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], meta: dict) -> str:
    w = meta["workers"]
    lines = [
        f"# MOP vs task and data parallelism (Fashion-MNIST, {meta['n_msts']} MSTs, "
        f"{meta['epochs']} epochs, {w} workers)",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; ray {meta['ray']}; {meta['date']}; "
        f"train/validation examples {meta['n_train']}/{meta['n_val']} "
        "(official training images / official test images). Load average (1 min) "
        f"{meta['load_average'][0]:.1f} at the start, {meta['load_average'][1]:.1f} at the end: "
        "other work on the machine slows the parallel systems first.",
        "",
        "| system | wall s | pure training s | ideal s | efficiency | efficiency (sequential "
        "work) | peak RSS MB (sum, processes) | peak RSS MB at once | data MB per worker "
        "| data MB total | communicated MB | what moves | mean val acc | mean gap | max abs gap |",
        "|---|" + "---|" * 14,
    ]
    for r in rows:
        per_worker = " / ".join(f"{b / MB:.1f}" for b in r["data_bytes_per_worker"])
        total = f"{r['data_bytes_total'] / MB:.1f}"
        if r.get("data_bytes_shared"):
            total += f" (object store {r['data_bytes_shared'] / MB:.1f})"
        lines.append(
            f"| {r['label']} | {r['wall_seconds']:.1f} | {r['compute_seconds']:.1f} | "
            f"{r['ideal_seconds']:.1f} | {r['efficiency']:.3f} | "
            f"{_f(r['efficiency_sequential_work'])} | "
            f"{r['peak_rss_bytes_sum'] / MB:.0f} ({r['n_processes']}) | "
            f"{r['peak_rss_concurrent_bytes'] / MB:.0f} | {per_worker} | {total} | "
            f"{r['bytes_communicated'] / MB:.1f} | {r['comm']} | {r['mean_val_accuracy']:.4f} | "
            f"{_f(r['mean_gap_to_sequential'], 4)} | {_f(r['max_abs_gap_to_sequential'], 4)} |"
        )
    lines += ["", "Final validation accuracy per MST (gap to sequential in brackets):", ""]
    lines.append("| MST | lr | batch | L2 | " + " | ".join(r["label"] for r in rows) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(rows))
    for i, mst in enumerate(rows[0]["msts"]):
        p = mst["params"]
        cells = []
        for r in rows:
            m = r["msts"][i]
            gap = m["gap_to_sequential"]
            cells.append(f"{m['val_accuracy']:.4f}" + ("" if not gap else f" ({gap:+.4f})"))
        lines.append(
            f"| {mst['id']} | {p['lr']} | {p['batch_size']} | {p['l2']} | {' | '.join(cells)} |"
        )
    lines += [
        "",
        "- **wall**: the system's run with the data already in the runner's memory: worker "
        "start-up (ray.init, process spawn, sharding / writing each rank's half), training, "
        "evaluation and shutdown. Every system runs in a fresh process; torch uses 1 thread "
        "in every process.",
        f"- **pure training s**: seconds measured inside modelhopper's `train_pass` and "
        f"`evaluate_pass` (the same passes in every system), summed over the system's "
        f"processes; **ideal** = that / {w} workers; **efficiency** = ideal / wall. For DDP "
        f"the pass seconds include the gradient all-reduce waits inside backward (they cannot "
        f"be separated); **efficiency (sequential work)** therefore also divides the "
        f"*sequential* run's pure seconds / {w} by each wall: one yardstick of work for all.",
        "- **peak RSS**: each process's peak resident set (`VmHWM`, polled every 0.25 s, and "
        "the `ru_maxrss` that DDP ranks and Tune trials report), summed over every process of "
        "the run (runner with the loaded data, workers, Ray's daemons and idle workers; in "
        "brackets the number of processes, e.g. one per Tune trial); shared pages (Ray's "
        "object store) count in every process that maps them. **At once**: the largest sum of "
        "the processes' current RSS seen by the 0.25 s poll (what the machine held at one time).",
        "- **data**: bytes of training + validation arrays each worker holds (MOP: its shards; "
        "DDP / model averaging: its half; Ray Tune: the trial's copy, which it makes of the "
        "fetched arrays as `torch.tensor(x)` would); Ray Tune's total adds the object store's "
        f"copy made by `tune.with_parameters` ({w} trials run at once).",
        "- **communicated**: MOP: hop bytes (MST state delivered to another worker); DDP: "
        "bytes of every gradient bucket each rank all-reduces (counted by a communication hook "
        "around DDP's allreduce), the initial weight broadcast and the metric sums; model "
        "averaging: parameter bytes each rank all-reduces per epoch; Ray Tune: the data bytes "
        "each trial fetched from the object store (shared memory on one node; network on a "
        "cluster).",
        f"- **DDP batch**: each of the {w} ranks takes batch_size / {w} examples per step, so "
        "the global batch, the steps per epoch and the learning rate equal the sequential "
        "run's. Model averaging trains each half with the MST's full batch size and averages "
        "the weights (not the Adam state) after every epoch.",
    ]
    if meta.get("skipped"):
        lines.append(f"- Not run: {', '.join(meta['skipped'])} (Ray is not installed).")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def column(key: str, scale: float = 1.0) -> list[float]:
        return [r[key] / scale if r[key] is not None else float("nan") for r in rows]

    panels = [
        ("wall seconds", column("wall_seconds"), False),
        (
            "efficiency (sequential work / 2 workers / wall)",
            column("efficiency_sequential_work"),
            False,
        ),
        ("peak RSS MB (sum over processes)", column("peak_rss_bytes_sum", MB), False),
        ("data MB resident (all workers)", column("data_bytes_total", MB), False),
        ("MB communicated (log scale)", column("bytes_communicated", MB), True),
        ("mean final validation accuracy", column("mean_val_accuracy"), False),
    ]
    labels = [r["label"].replace(" (", "\n(") for r in rows]
    colors = [f"C{SYSTEMS.index(r['system'])}" for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    for ax, (title, values, log) in zip(axes.flat, panels, strict=True):
        heights = [v if v and v == v else float("nan") for v in values] if log else values
        bars = ax.bar(range(len(rows)), heights, color=colors)
        texts = ["0" if v == 0 else f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" for v in values]
        ax.bar_label(bars, texts, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        if log and any(h > 0 for h in heights):  # (nan compares False)
            ax.set_yscale("log")
    fig.suptitle("One model selection workload, one run per system, 2 workers of 1 core")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    size = dict(SMOKE if args.smoke_test else FULL)
    size.update({k: getattr(args, k) for k in FULL if getattr(args, k) is not None})
    have_ray = importlib.util.find_spec("ray") is not None
    skipped = [] if have_ray else [s for s in args.systems if s in NEEDS_RAY]
    systems = [s for s in args.systems if s not in skipped]

    sys.path.insert(0, str(Path(__file__).parent))
    from _compare_systems import workload_msts

    cfg = {**size, "workers": args.workers, "msts": workload_msts(size["n_msts"])}
    rows, load_start = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mh-compare-") as tmp:
        for name in systems:
            print(f"[compare] {name} ...", flush=True)
            rows.append(run_one(name, cfg, Path(tmp)))
            print(f"[compare] {name}: wall {rows[-1]['wall_seconds']:.1f} s", flush=True)
    summarise(rows, args.workers)
    import torch

    meta = {
        **size,
        "workers": args.workers,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "torch": torch.__version__,
        "ray": __import__("ray").__version__ if have_ray else "not installed",
        "date": time.strftime("%Y-%m-%d"),
        "smoke_test": args.smoke_test,
        "skipped": skipped,
        "load_average": [load_start, os.getloadavg()[0]],
        "work_dir": tmp,  # removed at the end; no process of the run may outlive it
    }
    report = {"meta": meta, "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "compare_smoke" if args.smoke_test else "compare"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    text = markdown(rows, meta)
    (args.out / f"{stem}.md").write_text(text)
    plot(rows, args.out / f"{stem}.png")
    print(text)
    return report


def _run_system(name: str, config: str, out: str) -> None:
    """The runner: one system in this fresh process (``--run-system``)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _compare_systems import run_system

    result = run_system(name, json.loads(Path(config).read_text()))
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--run-system":
        _run_system(*sys.argv[2:5])
    else:
        main()
