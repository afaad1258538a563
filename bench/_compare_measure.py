"""Measuring a system's processes for bench/compare.py: peak resident memory of each.

Every process's peak resident set is read, not estimated: ``VmHWM`` in
``/proc/<pid>/status`` (the kernel's high-water mark of its RSS), polled for the
runner and all its descendants while they live, merged with the
``getrusage(RUSAGE_SELF).ru_maxrss`` that training processes report themselves
before they exit (a process shorter than one poll is still counted).
"""

from __future__ import annotations

import os
import resource
import socket
import threading
from typing import Any

import psutil

__all__ = ["ProcessMemory", "free_port", "max_rss_bytes"]


def max_rss_bytes() -> int:
    """This process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vmhwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ProcessMemory:
    """Polls this process and its descendants; ``stop()`` returns the peaks."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peaks: dict[int, int] = {}  # pid -> peak RSS bytes
        self.names: dict[int, str] = {}
        self.concurrent_peak = 0  # max over polls of the summed current RSS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-memory", daemon=True)

    def __enter__(self) -> ProcessMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        me = psutil.Process()
        try:
            processes = [me, *me.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in processes:
            try:
                rss, name = p.memory_info().rss, p.name()
            except psutil.Error:
                continue  # it exited between the listing and the read
            total += rss
            self.add(p.pid, max(rss, _vmhwm(p.pid)), name)
        self.peaks[me.pid] = max(self.peaks.get(me.pid, 0), max_rss_bytes())
        self.concurrent_peak = max(self.concurrent_peak, total)

    def add(self, pid: int, peak: int, name: str | None = None) -> None:
        """Merge a peak a process reported itself (its ru_maxrss) with the polled one."""
        self.peaks[pid] = max(self.peaks.get(pid, 0), int(peak))
        if name or pid not in self.names:
            self.names[pid] = name or self.names.get(pid, "?")

    def summary(self) -> dict[str, Any]:
        by_name: dict[str, list[int]] = {}
        for pid, peak in self.peaks.items():
            by_name.setdefault(self.names.get(pid, "?"), []).append(peak)
        return {
            "peak_rss_bytes_sum": sum(self.peaks.values()),
            "peak_rss_concurrent_bytes": self.concurrent_peak,
            "n_processes": len(self.peaks),
            "runner_pid": os.getpid(),
            "peak_rss_bytes_by_name": {
                name: {"n": len(v), "bytes": sum(v)} for name, v in sorted(by_name.items())
            },
        }
