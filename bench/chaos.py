"""Chaos: one run survives >= 20 worker kills and 2 driver kills with identical results.

    python bench/chaos.py [--smoke-test] [--seed N] [--out DIR] [--executor local|ray]

Runs a random search on digits twice, each driver a separate process started
the way a user would (``fit``, then ``resume`` after each driver kill), with
``max_restarts=10, restart_window=600``: the default budget (3 deaths per
worker per 600 s) is meant for real faults, not for 20 kills in a minute.
First undisturbed, then under a kill schedule drawn from the seed: SIGKILL
the first worker process the moment it exists after each driver start, kill
workers while they run drawn visits (some of them again the moment their
replacement exists), and kill the driver after a drawn visit. The local
executor is ``modelhopper.testing.ChaosExecutor``: the moments count the
run's own visits, so every planned kill is made however loaded the machine
(a killer polling the store can fall behind a short run). Reports the kills
survived, the wall time lost against the undisturbed run, MSTs lost or
duplicated (target 0) and per-epoch metric differences (target 0).
Writes bench/results/chaos.json and .md (``--smoke-test``: chaos_smoke.*, a
small run with 6 worker kills and 1 driver kill).

``--executor ray`` does the same on a loopback Ray cluster (a head without
CPUs and one 1-CPU node per worker, plus one spare per node removal; each node
its own raylet and object store): the drivers join it with
``RayExecutor(address=...)``, the kills hit the worker actors' processes, and
a drawn moment also removes the node of a running actor (its shard moves to
the spare node); there the killer is outside the run, polling the store for
drawn step counts. Writes chaos_ray.* (chaos_ray_smoke.*).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

import modelhopper as mh
from modelhopper.store import EventKind, SQLStore
from modelhopper.testing import KillPlan

RESULTS = Path(__file__).parent / "results"
TIMEOUT = 300.0  # seconds any awaited condition may take before the benchmark gives up


@dataclass(frozen=True)
class Config:
    n_msts: int
    epochs: int
    n_workers: int
    running_kills: int  # workers killed mid-run, at drawn step counts
    replacement_kills: int  # of those, how many also have their replacement killed as it starts
    driver_kills: int  # each followed by a resume, which starts with one start-up kill
    node_removals: int = 0  # Ray only: nodes of running actors removed at drawn step counts

    @property
    def n_steps(self) -> int:
        return self.n_msts * self.epochs * 2 * self.n_workers

    @property
    def worker_kills(self) -> int:
        return self.running_kills + self.replacement_kills + self.driver_kills + 1


FULL = Config(n_msts=12, epochs=8, n_workers=4, running_kills=12, replacement_kills=6,
              driver_kills=2)  # fmt: skip
SMOKE = Config(n_msts=4, epochs=4, n_workers=2, running_kills=3, replacement_kills=1,
               driver_kills=1)  # fmt: skip
# On 2 cores a Ray actor takes seconds to start (a fresh process importing torch).
RAY_FULL = Config(n_msts=8, epochs=6, n_workers=2, running_kills=12, replacement_kills=5,
                  driver_kills=2, node_removals=1)  # fmt: skip
RAY_SMOKE = Config(n_msts=4, epochs=4, n_workers=2, running_kills=2, replacement_kills=1,
                   driver_kills=1, node_removals=1)  # fmt: skip
RAY_ACTOR = "ray::_ShardActor"  # the title Ray gives a worker actor's process

SPEC = """
import torch
from torch import nn
import modelhopper as mh

def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(p["hidden"], 10))
    return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32)

space = {{"hidden": mh.choice([16, 32, 64]), "lr": mh.loguniform(1e-3, 1e-2)}}
data = mh.datasets.digits
search = mh.RandomSearch(make_estimator, space, n_msts={n_msts}, epochs={epochs},
                         metric="val_accuracy", direction="maximize", seed=3)
"""

DRIVER = """
import sys
from pathlib import Path
import modelhopper as mh
from modelhopper.cli import load_spec, spec_objects

mode, spec, name, url, run_dir, n_workers, address, plan, log = sys.argv[1:]
if address == "local" and plan != "none":
    from modelhopper.testing import ChaosExecutor, KillPlan

    # One copy of the data: the kill schedule counts visits of one sub-epoch each.
    executor = ChaosExecutor(KillPlan.from_json(plan), log=log, max_restarts=10,
                             restart_window=600, replicas=1)
elif address == "local":
    executor = mh.LocalExecutor(max_restarts=10, restart_window=600, replicas=1)
else:  # actors start slowly on 2 cores: a long start timeout
    executor = mh.RayExecutor(address=address, max_restarts=10, restart_window=600,
                              start_timeout=600)
if mode == "run":
    search, data = spec_objects(load_spec(Path(spec)), Path(spec))
    search.fit(data, n_workers=int(n_workers), run_name=name, store=url, run_dir=run_dir,
               executor=executor)
else:
    mh.resume(name, store=url, executor=executor)
"""


def _until(condition, what: str, alive=lambda: True):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and alive():
        if found := condition():
            return found
        time.sleep(0.002)
    return None if not alive() else sys.exit(f"chaos: {what} within {TIMEOUT:.0f} s")


def _n_steps(url: str, name: str) -> int:
    store = SQLStore(url)
    try:
        return len(store.list_steps(name))
    except mh.StoreError:
        return 0
    finally:
        store.close()


def _ray_workers(driver: psutil.Process) -> list[int]:
    """Worker actors' processes: children of the nodes' raylets, not of the driver."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        command = process.info["cmdline"] or [""]
        if command[0].startswith(RAY_ACTOR) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return sorted(found)


def _start_cluster(config: Config):
    """A loopback Ray cluster: a head without CPUs, one 1-CPU node per worker and spares."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    health = {"health_check_period_ms": 200, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 80 * 2**20, "_system_config": health})  # fmt: skip
    for _ in range(config.n_workers + config.node_removals):
        cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    return cluster


class _Run:
    """One run, its driver started again (resume) after each driver kill, until it completes."""

    def __init__(self, folder: Path, name: str, config: Config, cluster=None) -> None:
        self.folder, self.name, self.config, self.cluster = folder, name, config, cluster
        self.address = cluster.address if cluster is not None else "local"
        self.url = f"sqlite:///{folder}/{name}.sqlite"
        self.kills: list[dict] = []
        self.phase_seconds: list[float] = []

    def _start(self, mode: str, plan: KillPlan | None = None) -> subprocess.Popen:
        log = (self.folder / f"{self.name}.log").open("ab")
        command = [sys.executable, str(self.folder / "driver.py"), mode,
                   str(self.folder / "spec.py"), self.name, self.url,
                   str(self.folder / self.name), str(self.config.n_workers),
                   self.address, plan.to_json() if plan is not None else "none",
                   str(self.folder / f"{self.name}.kills")]  # fmt: skip
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def visits(self) -> int:
        """Visits recorded so far (one HOPPED event each)."""
        store = SQLStore(self.url)
        try:
            return sum(e.kind is EventKind.HOPPED for e in store.list_events(self.name))
        except mh.StoreError:
            return 0
        finally:
            store.close()

    def go_planned(self, rng: random.Random, total_visits: int) -> None:
        """Run to completion under kill plans drawn per driver start (LocalExecutor): the
        running kills spread over the starts, each start but the last ending in a driver
        kill, the last start's kills well before its end (so each is noticed)."""
        config = self.config
        starts = config.driver_kills + 1
        running = [config.running_kills // starts + (i < config.running_kills % starts)
                   for i in range(starts)]  # fmt: skip
        again = [config.replacement_kills // starts + (i < config.replacement_kills % starts)
                 for i in range(starts)]  # fmt: skip
        for start in range(starts):
            remaining = total_visits - self.visits()
            last = start == starts - 1
            # a driver killed about evenly through what is left; the last start's kills
            # end a quarter before its end, so the workers get more visits after them
            visits = remaining * 3 // 4 if last else remaining // (starts - start)
            plan = KillPlan.draw(rng, visits=visits, running=running[start],
                                 replacements=again[start], driver=not last)  # fmt: skip
            t0 = time.monotonic()
            driver = self._start("run" if start == 0 else "resume", plan)
            driver.wait(timeout=TIMEOUT * 4)
            self.phase_seconds.append(time.monotonic() - t0)
            want = 0 if last else -signal.SIGKILL
            if driver.returncode != want:
                log = (self.folder / f"{self.name}.log").read_text()
                sys.exit(f"chaos: the {self.name} run failed:\n{log[-3000:]}")
        lines = (self.folder / f"{self.name}.kills").read_text().splitlines()
        self.kills = [json.loads(line) for line in lines]

    def _kill(self, moment: str, pid: int, t0: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            steps = _n_steps(self.url, self.name)
            self.kills.append({"moment": moment, "pid": pid, "steps": steps,
                               "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip

    def _remove_node(self, pid: int, t0: float) -> None:
        """Remove the Ray node whose raylet runs this worker actor."""
        with contextlib.suppress(psutil.NoSuchProcess):
            raylet = psutil.Process(pid).ppid()
            node = next(n for n in self.cluster.worker_nodes
                        if n.all_processes["raylet"][0].process.pid == raylet)  # fmt: skip
            self.cluster.remove_node(node)
            steps = _n_steps(self.url, self.name)
            self.kills.append({"moment": "node", "pid": raylet, "steps": steps,
                               "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip

    def _kill_newborn(self, process: psutil.Process, seen: set[int], alive, t0: float) -> None:
        new = _until(lambda: sorted(set(_ray_workers(process)) - seen), "no new worker", alive)
        if new:
            seen.update(new)
            self._kill("start-up", new[0], t0)

    def go(self, rng: random.Random | None) -> None:
        """Run to completion; with rng, under the kill schedule it draws (a Ray cluster:
        the killer is this process, polling the store for the drawn step counts)."""
        config, n = self.config, self.config.n_steps
        workers_at: list[tuple[int, bool]] = []
        drivers_at: list[int] = []
        nodes_at: list[int] = []
        if rng is not None:
            steps = sorted(rng.sample(range(5, n - 15), config.running_kills))
            nodes_at = sorted(rng.sample(range(n // 4, n // 2), config.node_removals))
            again = set(rng.sample(range(config.running_kills), config.replacement_kills))
            workers_at = [(s, i in again) for i, s in enumerate(steps)]
            gap = n // (config.driver_kills + 1)
            drivers_at = [gap * (k + 1) + rng.randrange(-gap // 4, gap // 4)
                          for k in range(config.driver_kills)]  # fmt: skip
        mode = "run"
        while True:
            t0 = time.monotonic()
            driver = self._start(mode)
            process = psutil.Process(driver.pid)
            alive = lambda: driver.poll() is None  # noqa: E731, B023
            seen: set[int] = set()
            if rng is not None:
                self._kill_newborn(process, seen, alive, t0)
            while alive():
                done = _n_steps(self.url, self.name)
                if workers_at and done >= workers_at[0][0] and (pids := _ray_workers(process)):
                    _, again = workers_at.pop(0)
                    seen.update(pids)
                    self._kill("running", rng.choice(pids), t0)  # type: ignore[union-attr]
                    if again:
                        self._kill_newborn(process, seen, alive, t0)
                elif nodes_at and done >= nodes_at[0] and (pids := _ray_workers(process)):
                    nodes_at.pop(0)
                    seen.update(pids)
                    self._remove_node(rng.choice(pids), t0)  # type: ignore[union-attr]
                elif drivers_at and done >= drivers_at[0]:
                    drivers_at.pop(0)
                    self._kill("driver", driver.pid, t0)
                    driver.wait(timeout=TIMEOUT)
                else:
                    time.sleep(0.02)
            driver.wait(timeout=TIMEOUT)
            self.phase_seconds.append(time.monotonic() - t0)
            if driver.returncode == 0:
                return
            if driver.returncode != -signal.SIGKILL:
                log = (self.folder / f"{self.name}.log").read_text()
                sys.exit(f"chaos: the {self.name} run failed:\n{log[-3000:]}")
            mode = "resume"

    def history(self) -> dict[int, list[dict]]:
        result = mh.load_result(self.name, store=self.url)
        history = result.history().drop(columns=["train_seconds", "eval_seconds"])
        return {int(m): rows.to_dict("records") for m, rows in history.groupby("mst_id")}

    def duplicates(self) -> int:
        store = SQLStore(self.url)
        try:
            keys = Counter(
                (s.mst_id, s.epoch, s.kind, s.shard) for s in store.list_steps(self.name)
            )
            return sum(count - 1 for count in keys.values())
        finally:
            store.close()


def _differences(got: dict[int, list[dict]], want: dict[int, list[dict]]) -> int:
    """Per-epoch cells (MST, epoch, column) that differ, counting missing epochs."""
    differences = 0
    for mst, rows in want.items():
        theirs = got.get(mst, [])
        differences += abs(len(rows) - len(theirs)) * len(rows[0])
        for a, b in zip(rows, theirs, strict=False):
            differences += sum(a[k] != b.get(k) for k in a)
    return differences


def measure(config: Config, seed: int, executor: str = "local") -> dict:
    cluster = _start_cluster(config) if executor == "ray" else None
    try:
        return _measure(config, seed, executor, cluster)
    finally:
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()


def _measure(config: Config, seed: int, executor: str, cluster) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "spec.py").write_text(SPEC.format(n_msts=config.n_msts, epochs=config.epochs))
        (folder / "driver.py").write_text(textwrap.dedent(DRIVER))
        calm = _Run(folder, "calm", config, cluster)
        chaos = _Run(folder, "chaos", config, cluster)
        calm.go(None)
        if cluster is None:
            chaos.go_planned(random.Random(seed), total_visits=calm.visits())
        else:
            chaos.go(random.Random(seed))
        want, got = calm.history(), chaos.history()
        moments = Counter(k["moment"] for k in chaos.kills)
        return {
            "executor": executor,
            "config": asdict(config),
            "seed": seed,
            "worker_kills_survived": moments["start-up"] + moments["running"],
            "worker_kills_at_start_up": moments["start-up"],
            "driver_kills_survived": moments["driver"],
            "node_removals_survived": moments["node"],
            "undisturbed_seconds": round(sum(calm.phase_seconds), 2),
            "disturbed_seconds": round(sum(chaos.phase_seconds), 2),
            "seconds_lost": round(sum(chaos.phase_seconds) - sum(calm.phase_seconds), 2),
            "driver_phases": [round(s, 2) for s in chaos.phase_seconds],
            "msts_lost": len(set(want) - set(got)),
            "msts_added": len(set(got) - set(want)),
            "steps_recorded_twice": chaos.duplicates(),
            "metric_differences": _differences(got, want),
            "kills": chaos.kills,
        }


def _markdown(r: dict) -> str:
    c, ray = r["config"], r["executor"] == "ray"
    executor = (
        "`RayExecutor(max_restarts=10, restart_window=600)` on a loopback Ray cluster "
        f"({c['n_workers'] + c['node_removals']} 1-CPU nodes, worker actors' processes killed"
        f", {c['node_removals']} node(s) of a running actor removed at drawn step counts)"
        if ray
        else "`modelhopper.testing.ChaosExecutor(plan, max_restarts=10, restart_window=600)` "
        "(a LocalExecutor that SIGKILLs its workers and its driver at the planned visits)"
    )
    return "\n".join([
        f"# Chaos (digits, {'RayExecutor' if ray else 'LocalExecutor'}, SIGKILL)",
        "",
        f"Random search, {c['n_msts']} MSTs x {c['epochs']} epochs on {c['n_workers']} workers "
        f"(seed {r['seed']}); {executor}. Each "
        "driver start (run, then each resume) is followed by a kill of the first worker "
        "process the moment it exists; running workers are killed at drawn "
        + ("step counts" if ray else "visits")
        + ", some again the moment their replacement exists; the driver at drawn "
        + ("step counts." if ray else "visits."),
        "",
        "| worker kills survived (at start-up) | driver kills survived | nodes removed "
        "| undisturbed s | disturbed s | s lost | MSTs lost | steps recorded twice "
        "| metric differences |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['worker_kills_survived']} ({r['worker_kills_at_start_up']}) "
        f"| {r['driver_kills_survived']} | {r['node_removals_survived']} "
        f"| {r['undisturbed_seconds']} "
        f"| {r['disturbed_seconds']} | {r['seconds_lost']} | {r['msts_lost']} "
        f"| {r['steps_recorded_twice']} | {r['metric_differences']} |",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="6 worker kills, 1 driver kill")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill schedule")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    args = parser.parse_args()
    configs = {"local": (FULL, SMOKE), "ray": (RAY_FULL, RAY_SMOKE)}[args.executor]
    report = measure(configs[args.smoke_test], args.seed, args.executor)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (
        "chaos" + ("_ray" if args.executor == "ray" else "") + ("_smoke" if args.smoke_test else "")
    )
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
