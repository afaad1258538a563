"""Soak: a 500-MST random search on digits; does any process's memory grow as MSTs go by?

    python bench/soak.py [--smoke-test] [--out DIR]

Samples the RSS of the driver (this process) and of each worker process every
0.25 s through one ``fit`` (2 workers, 2 epochs per MST; the sampling thread
makes the workers start from the zygote, which is listed too), then compares the
mean over the first and the last 10 % of the samples taken after warm-up
(the first 10 % of the run). Target: last / first within 1.10 for the driver
and every worker. Writes bench/results/soak.json and .md (``--smoke-test``:
40 MSTs, soak_smoke.* in a temp folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from torch import nn

import modelhopper as mh
from modelhopper.executors._host import PROCESS_NAME

RESULTS = Path(__file__).parent / "results"
INTERVAL = 0.25
TARGET = 1.10


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["l2"]),
        loss=nn.CrossEntropyLoss(),
        batch_size=p["batch_size"],
    )


SPACE = {
    "hidden": mh.choice([16, 32, 64, 128]),
    "lr": mh.loguniform(1e-4, 1e-1),
    "l2": mh.choice([0.0, 1e-5, 1e-4]),
    "batch_size": mh.choice([32, 64]),
}


class Sampler(threading.Thread):
    """RSS of this process and of its workers (children named by pid), every INTERVAL s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples: list[tuple[float, int, dict[int, int]]] = []
        self.names: dict[int, str] = {}  # pid -> "worker" or "zygote" (it forks the workers)
        self._me = psutil.Process()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(INTERVAL):
            workers = {}
            for child in self._me.children(recursive=True):
                try:
                    workers[child.pid] = child.memory_info().rss
                    name = child.name()
                    self.names[child.pid] = "worker" if name == PROCESS_NAME else "zygote"
                except psutil.Error:
                    continue  # it ended between the listing and the reading
            rss = self._me.memory_info().rss
            self.samples.append((time.monotonic() - started, rss, workers))


def _window_mean(values: list[int], start: float, end: float) -> float:
    part = values[
        int(len(values) * start) : max(int(len(values) * end), int(len(values) * start) + 1)
    ]
    return sum(part) / len(part)


def growth(series: list[int]) -> dict[str, float]:
    """First vs last 10 % of the samples after the first 10 % (warm-up)."""
    steady = series[len(series) // 10 :]
    first, last = _window_mean(steady, 0.0, 0.1), _window_mean(steady, 0.9, 1.0)
    return {"first_mib": round(first / 2**20, 1), "last_mib": round(last / 2**20, 1),
            "ratio": round(last / first, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="40 MSTs, for CI")
    parser.add_argument("--out", type=Path, help="default bench/results (a temp folder if smoke)")
    args = parser.parse_args()
    n_msts = 40 if args.smoke_test else 500
    data = mh.datasets.digits()
    search = mh.RandomSearch(make_estimator, SPACE, n_msts=n_msts, epochs=2,
                             metric="val_accuracy", direction="maximize", seed=0)  # fmt: skip
    sampler = Sampler()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        sampler.start()
        started = time.perf_counter()
        result = search.fit(data, n_workers=2, run_dir=Path(tmp) / "run",
                            store=f"sqlite:///{tmp}/soak.sqlite")  # fmt: skip
        seconds = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
    pids = sorted({pid for _, _, workers in sampler.samples for pid in workers})
    # A worker's series: the samples in which it was alive (a replaced worker has two).
    workers = {
        pid: [w[pid] for _, _, w in sampler.samples if pid in w]
        for pid in pids
        if sum(pid in w for _, _, w in sampler.samples) >= 20
    }
    rows = {"driver": growth([rss for _, rss, _ in sampler.samples])}
    rows.update({f"{sampler.names[pid]} pid {pid}": growth(s) for pid, s in workers.items()})
    data_out = {
        "meta": {
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "n_msts": n_msts, "epochs": 2, "n_workers": 2, "seconds": round(seconds, 1),
            "n_samples": len(sampler.samples), "completed": sum(
                m.status is mh.MSTStatus.COMPLETED for m in result.msts),
            "smoke_test": args.smoke_test,
        },
        "target_ratio": TARGET,
        "processes": rows,
    }  # fmt: skip
    out = args.out or (Path(tempfile.mkdtemp(prefix="soak-")) if args.smoke_test else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke_test else ""
    (out / f"soak{suffix}.json").write_text(json.dumps(data_out, indent=2))
    (out / f"soak{suffix}.md").write_text(_markdown(data_out))
    print(_markdown(data_out))
    print(f"written to {out}")


def _markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [
        "# Soak: memory over a long random search",
        "",
        f"{meta['n_msts']} MSTs x {meta['epochs']} epochs on digits, {meta['n_workers']} "
        f"workers, one `fit` of {meta['seconds']} s ({meta['completed']} MSTs completed); "
        f"{meta['machine']}, torch {meta['torch']}, {meta['date']}. RSS sampled every "
        f"{INTERVAL} s ({meta['n_samples']} samples); first vs last 10 % of the samples after "
        "the first 10 % (warm-up). `python bench/soak.py`.",
        "",
        "| process | first MiB | last MiB | last / first (target) |",
        "|---|---|---|---|",
    ]
    for name, row in data["processes"].items():
        met = "met" if row["ratio"] <= data["target_ratio"] else "missed"
        lines.append(
            f"| {name} | {row['first_mib']} | {row['last_mib']} | {row['ratio']} "
            f"(<= {data['target_ratio']}: **{met}**) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
