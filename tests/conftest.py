from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_in_tmp_dir(tmp_path_factory):
    """Module-scoped fixtures run before any test's own folder: give them one too."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session-cwd"))
    yield
    os.chdir(before)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """Default stores and run directories (./modelhopper-runs) land in the test's own folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def ray_lock(tmp_path_factory) -> Callable[[], AbstractContextManager[None]]:
    """``with ray_lock():`` around everything that starts Ray: one Ray cluster at a time.

    ``make test`` runs test files side by side on pytest-xdist workers. Two Ray
    clusters on 2 cores starve each other's actors past their start timeout, and a
    loopback cluster (``ray.cluster_utils.Cluster``) writes /tmp/ray/ray_current_cluster,
    which a plain ``ray.init()`` in another process then joins. The lock is an
    exclusive ``flock`` on a file in the folder all workers of one run share (each
    worker's basetemp is ``<run's basetemp>/popen-gwN``); re-entrant within a process.
    """
    basetemp = tmp_path_factory.getbasetemp()
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    path = shared / "ray.lock"
    depth = 0

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        nonlocal depth
        # Closing the file releases the lock; a nested hold's own file never took it.
        with open(path, "a") as file:
            if depth == 0:
                fcntl.flock(file, fcntl.LOCK_EX)
            depth += 1
            try:
                yield
            finally:
                depth -= 1

    return hold


@pytest.fixture
def load_search(tmp_path) -> Callable[[str], tuple[Any, Any]]:
    """``(search, data)`` of a spec file's text (written to ``tmp_path / "spec.py"``), as
    ``modelhopper run`` loads it."""

    def load(text: str) -> tuple[Any, Any]:
        from modelhopper.cli import load_spec, spec_objects

        spec = tmp_path / "spec.py"
        spec.write_text(text)
        return spec_objects(load_spec(spec), spec)

    return load


@pytest.fixture(scope="session")
def plan_metrics() -> Callable[[Any], list[dict]]:
    """Every epoch's metrics of a result, in MST and epoch order, without what may differ
    between equal runs: timings, and the order of evaluations (it follows which worker
    came free, and changes no result)."""

    def metrics(result: Any) -> list[dict]:
        history = result.history().drop(columns=["train_seconds", "eval_seconds", "eval_order"])
        return history.sort_values(["mst_id", "epoch"]).to_dict("records")

    return metrics
