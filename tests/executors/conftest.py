"""Ray for the executor tests: started by the tests that need it, and stopped after them."""

from __future__ import annotations

import os

import psutil
import pytest

_RAY_PROCESSES = ("raylet", "gcs_server", "plasma_store", "ray::")


def ray_processes() -> set[int]:
    """Pids of Ray's daemons and workers running on this machine."""
    found = set()
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            text = " ".join([process.info["name"] or "", *(process.info["cmdline"] or [])[:2]])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(mark in text for mark in _RAY_PROCESSES):
            found.add(process.pid)
    return found


def wait_until_gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    """Wait for processes to exit; return the ones still alive."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return {p.pid for p in alive}


@pytest.fixture(scope="module")
def ray_single_node():
    """One Ray node on this machine (4 logical CPUs, so two runs' actors fit at once)."""
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'modelhopper[ray]'")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    before = ray_processes()
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()
    leftover = wait_until_gone(ray_processes() - before)
    assert not leftover, f"Ray processes left behind: {sorted(leftover)}"
