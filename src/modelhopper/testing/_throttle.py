"""Throttle: a worker made slower from outside, as one on a busier or older machine."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle(threading.Thread):
    """Stops a process ``stopped`` seconds out of every ``period`` (SIGSTOP / SIGCONT), so
    that it runs ``period / (period - stopped)`` times slower; ``stop()`` lets it run.

    ``pid`` is called until it returns a process id (e.g. once an executor has started
    its workers: ``lambda: executor.pids[1] if len(executor.pids) > 1 else None``).
    POSIX only.
    """

    def __init__(
        self, pid: Callable[[], int | None], *, stopped: float = 0.02, period: float = 0.03
    ) -> None:
        if not 0 <= stopped < period:
            raise ValueError(f"need 0 <= stopped < period, got {stopped} and {period}")
        super().__init__(daemon=True, name="modelhopper-throttle")
        self._pid, self.stopped, self.period = pid, stopped, period
        self._halt = threading.Event()

    @property
    def slowdown(self) -> float:
        return self.period / (self.period - self.stopped)

    def run(self) -> None:
        pid = None
        while pid is None and not self._halt.wait(0.01):
            pid = self._pid()
        if pid is None:
            return
        try:
            while not self._halt.is_set():
                os.kill(pid, signal.SIGSTOP)
                time.sleep(self.stopped)
                os.kill(pid, signal.SIGCONT)
                time.sleep(self.period - self.stopped)
        except ProcessLookupError:
            pass  # it ended
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
