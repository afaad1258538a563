"""Ray for the executor tests: started by the tests that need it, and stopped after them."""

from __future__ import annotations

import os

import psutil
import pytest

_RAY_PROCESSES = ("raylet", "gcs_server", "plasma_store", "ray::")


def ray_processes() -> set[int]:
    """Pids of the Ray daemons and workers this test process started (its descendants).

    Only descendants count: tests in other pytest-xdist workers run Ray clusters of their own.
    """
    found = set()
    for process in psutil.Process().children(recursive=True):
        try:
            text = " ".join([process.name() or "", *(process.cmdline() or [])[:2]])
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
def ray_single_node(ray_lock):
    """One Ray node on this machine (4 logical CPUs, so two runs' actors fit at once).

    ``address="local"``: a new instance, never a cluster another process left in
    /tmp/ray/ray_current_cluster.
    """
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'modelhopper[ray]'")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with ray_lock():
        before = ray_processes()
        ray.init(address="local", num_cpus=4, include_dashboard=False,
                 object_store_memory=200 * 2**20)  # fmt: skip
        yield ray
        started = ray_processes() - before  # before shutdown: a process it misses is orphaned
        ray.shutdown()
        leftover = wait_until_gone(started | (ray_processes() - before))
        assert not leftover, f"Ray processes left behind: {sorted(leftover)}"


@pytest.fixture(scope="module")
def ray_cluster(ray_lock):
    """Start a multi-node Ray cluster on loopback: a head with no CPUs, and 1-CPU worker nodes.

    Each node runs its own raylet and object store. Call the fixture's value with
    ``n_nodes`` (head included); the cluster and all its processes are stopped after the module.
    """
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'modelhopper[ray]'")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with ray_lock():
        before = ray_processes()
        clusters = []

        def start(n_nodes: int):
            # Fast failure detection, so a removed node is declared dead in about a second.
            config = {"health_check_period_ms": 200, "health_check_failure_threshold": 3}
            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20,
                                "_system_config": config},
            )  # fmt: skip
            clusters.append(cluster)
            for _ in range(n_nodes - 1):
                cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
            ray.init(address=cluster.address)
            cluster.wait_for_nodes()
            return cluster

        yield start
        started = ray_processes() - before  # before shutdown: a process it misses is orphaned
        ray.shutdown()
        for cluster in clusters:
            cluster.shutdown()
        leftover = wait_until_gone(started | (ray_processes() - before))
        assert not leftover, f"Ray processes left behind: {sorted(leftover)}"
