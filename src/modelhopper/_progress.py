"""A rich progress bar of steps done / total with ETA (or nothing, when disabled)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# The bar redraws ten times a second; its total (steps left over every MST) costs a walk
# over all MSTs, so it is asked no more often than that, not once per visit.
_TOTAL_EVERY_SECONDS = 0.1


class ProgressBar:
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self.done = 0
        self._bar: Any = None
        self._total_due = 0.0

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]sub-epochs"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total)
        return self

    def update(self, n_done: int, remaining: Callable[[], int]) -> None:
        """``n_done`` more steps finished; ``remaining()`` are left (MSTs may be added or
        stopped), asked only when the bar is shown, at most every 0.1 s."""
        self.done += n_done
        if self._bar is None:
            return
        now = time.monotonic()
        if now < self._total_due:
            self._bar.update(self._task, completed=self.done)
            return
        self._total_due = now + _TOTAL_EVERY_SECONDS
        self._bar.update(self._task, completed=self.done, total=self.done + remaining())

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._bar is not None:
            if exc_type is None:  # every step done: the last total asked may be older
                self._bar.update(self._task, completed=self.done, total=self.done)
            self._bar.stop()
