"""The restart budget every executor applies: a rate of worker deaths, not a lifetime count.

A long run survives many transient faults (a node's OOM killer, a preempted
machine), while a worker that dies again and again within ``restart_window``
seconds is a crash loop, reported with its count, its window and the fix.
"""

from __future__ import annotations

import time
from collections import deque

from modelhopper.errors import ConfigError

__all__ = ["RestartBudget", "check_worker_options"]

_clock = time.monotonic  # when each death happened; tests move it


def _check_restart_window(restart_window: object) -> None:
    if (
        isinstance(restart_window, bool)
        or not isinstance(restart_window, int | float)
        or not restart_window > 0
    ):
        raise ConfigError(
            f"restart_window must be a number of seconds > 0, got {restart_window!r}; "
            "max_restarts deaths of one worker within it are tolerated "
            "(float('inf'): over the whole run)"
        )


def check_worker_options(
    *,
    threads_per_worker: object,
    max_restarts: object,
    restart_window: object,
    start_timeout: object,
) -> None:
    """The constructor arguments every executor shares, checked the same way."""
    if threads_per_worker is not None and not _is_int_at_least(threads_per_worker, 1):
        raise ConfigError(f"threads_per_worker must be an int >= 1, got {threads_per_worker!r}")
    if not _is_int_at_least(max_restarts, 0):
        raise ConfigError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    _check_restart_window(restart_window)
    if (
        isinstance(start_timeout, bool)
        or not isinstance(start_timeout, int | float)
        or not (start_timeout > 0)
    ):
        raise ConfigError(f"start_timeout must be > 0 seconds, got {start_timeout!r}")


def _is_int_at_least(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


class RestartBudget:
    """Each worker may die ``max_restarts`` times within any ``window`` seconds (a rate)."""

    def __init__(self, n_workers: int, max_restarts: int, window: float) -> None:
        self.max_restarts, self.window = max_restarts, float(window)
        self._deaths: list[deque[float]] = [deque() for _ in range(n_workers)]
        self.counts = [0] * n_workers  # deaths of each worker over the run (each replaced)

    def add_worker(self) -> None:
        """One more worker (it joined a running run), with a budget of its own."""
        self._deaths.append(deque())
        self.counts.append(0)

    def died(self, worker: int) -> str:
        """Count a death now; past the budget, why it is a crash loop (else "")."""
        self.counts[worker] += 1
        now = _clock()
        deaths = self._deaths[worker]
        deaths.append(now)
        while deaths[0] <= now - self.window:
            deaths.popleft()
        if len(deaths) <= self.max_restarts:
            return ""
        return (
            f"; it died {len(deaths)} times (max_restarts={self.max_restarts}) within "
            f"{self.window:g} s (restart_window), so it is crash-looping"
        )

    @staticmethod
    def fix(executor: str) -> str:
        return (
            f"if its deaths are transient, tolerate more with {executor}(max_restarts=..., "
            "restart_window=...)"
        )
