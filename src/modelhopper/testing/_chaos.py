"""Chaos on a clock of the run's own progress: a LocalExecutor that SIGKILLs its workers
(and, if asked, its driver) at planned visits.

A killer outside the run that polls the store for progress races the run: on a
loaded machine the run can finish before a kill is due, and a kill made after a
worker's last visit is never noticed. Counting moments in visits handed out
makes a kill schedule exact whatever the load: a worker killed right after it
was handed its n-th visit dies running it, and the driver notices; a worker
process killed the moment it is launched dies starting. The kills are real
``SIGKILL``s of real processes; only the moment is chosen from inside.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelhopper.executors import LocalExecutor, VisitTask

__all__ = ["ChaosExecutor", "Kill", "KillPlan"]


@dataclass(frozen=True)
class Kill:
    """One kill made: ``moment`` is "start-up", "running" or "driver"."""

    moment: str
    pid: int
    worker: int | None  # None for the driver
    visit: int  # visits handed out by then (this executor's count)


@dataclass(frozen=True)
class KillPlan:
    """When a ``ChaosExecutor`` kills, in its own counts (1-based).

    ``start_up``: launches of worker processes (over the executor's life) killed
    the moment they exist, before they report ready. ``running``: visits (in the
    order handed out) whose worker is killed right after it gets the visit; the
    value says whether that worker's replacement is killed too, as it starts.
    ``driver``: the visit after which the driver's own process is killed (a
    ``kill -9`` of the driver; the run resumes with ``mh.resume``).
    """

    start_up: frozenset[int] = frozenset()
    running: Mapping[int, bool] = field(default_factory=dict)
    driver: int | None = None

    @classmethod
    def draw(
        cls,
        rng: random.Random,
        *,
        visits: int,
        running: int,
        replacements: int,
        start_up: int = 1,
        driver: bool = False,
    ) -> KillPlan:
        """A plan over the first ``visits`` visits: ``running`` kills at distinct visits
        (``replacements`` of them with their replacement killed too), the first
        ``start_up`` launches killed, and the driver killed after the last visit."""
        if running > visits - 1:
            raise ValueError(f"{running} running kills do not fit in {visits} visits")
        at = sorted(rng.sample(range(1, visits), running))
        again = set(rng.sample(at, replacements))
        return cls(
            start_up=frozenset(range(1, start_up + 1)),
            running={v: v in again for v in at},
            driver=visits if driver else None,
        )

    def to_json(self) -> str:
        return json.dumps(
            {"start_up": sorted(self.start_up), "running": self.running, "driver": self.driver}
        )

    @classmethod
    def from_json(cls, text: str) -> KillPlan:
        raw = json.loads(text)
        running = {int(k): bool(v) for k, v in raw["running"].items()}
        return cls(frozenset(raw["start_up"]), running, raw["driver"])

    @property
    def worker_kills(self) -> int:
        return len(self.start_up) + len(self.running) + sum(self.running.values())


class ChaosExecutor(LocalExecutor):
    """A ``LocalExecutor`` that kills its own worker processes, and the driver, per ``plan``.

    ``log``: a file each kill is appended to (a JSON line) before it is made, so a
    harness counts the kills of a driver that killed itself. ``kills``: the kills made.
    Other keyword arguments go to ``LocalExecutor``.
    """

    def __init__(self, plan: KillPlan, *, log: str | Path | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.plan = plan
        self.log = Path(log) if log is not None else None
        self.kills: list[Kill] = []
        self._launches = self._visits = 0
        self._doomed: set[int] = set()  # workers whose next process dies as it starts

    # The kills land at seams of LocalExecutor where the victim cannot have moved on:
    # a new process before it is sent its spec (so it never reports ready), a worker
    # before it is sent its visit (so it never finishes it). A SIGKILL sent to a
    # process is final when os.kill returns: it runs no more of its own code.

    def _spawn(self, worker: int, method: str) -> Any:
        process = super()._spawn(worker, method)
        self._launches += 1
        if self._launches in self.plan.start_up or worker in self._doomed:
            self._doomed.discard(worker)
            self._kill("start-up", process.pid, worker)
        return process

    def submit(self, worker: int, task: VisitTask) -> None:
        self._visits += 1
        super().submit(worker, task)
        if self._visits == self.plan.driver:
            self._kill("driver", os.getpid(), None)

    def _hand(self, worker: int, task: VisitTask) -> None:
        again = self.plan.running.get(self._visits)
        if again is not None:
            self._kill("running", self._processes[worker].pid, worker)
            if again:
                self._doomed.add(worker)
        super()._hand(worker, task)

    def _kill(self, moment: str, pid: int, worker: int | None) -> None:
        kill = Kill(moment, pid, worker, self._visits)
        self.kills.append(kill)
        if worker is not None:  # a worker dies first: the log's fsync can take a while
            os.kill(pid, signal.SIGKILL)
        if self.log is not None:  # the driver's kill is logged first: it ends this process
            with self.log.open("a") as f:
                f.write(json.dumps(asdict(kill)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if worker is None:
            os.kill(pid, signal.SIGKILL)
