"""A rich progress bar of steps done / total with ETA (or nothing, when disabled)."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self.done = 0
        self._bar: Any = None

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

    def update(self, n_done: int, remaining: int) -> None:
        """``n_done`` more steps finished; ``remaining`` are left (MSTs may be added or stopped)."""
        self.done += n_done
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.done + remaining)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
