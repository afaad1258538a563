from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

# A test that starts Ray says so in its id: "ray" as a word of its file, name or parameters.
_STARTS_RAY = re.compile(r"(?<![a-z])ray(?![a-z])")
_RAY_FIXTURES = {"ray_lock", "ray_single_node", "ray_cluster"}


def starts_ray(nodeid: str) -> bool:
    return _STARTS_RAY.search(nodeid) is not None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with every test that starts Ray in one unit of work, first.

    Only one Ray cluster runs at a time (``ray_lock``). With a unit per file, the
    second xdist worker to reach a Ray file waited for the first's whole file, a core
    idle; as one unit, the Ray tests run one after another in one worker while the
    other worker runs the rest. It is the longest unit (minutes): handed out first,
    it does not end the run alone.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class RayTestsTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if starts_ray(nodeid) else super()._split_scope(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if "ray" in self.workqueue:
                self.workqueue.move_to_end("ray", last=False)
            super()._assign_work_unit(node)

    return RayTestsTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that takes a Ray fixture without saying "ray" in its id: it would
    run beside the Ray unit and wait on its lock."""
    unnamed = [
        item.nodeid
        for item in items
        if _RAY_FIXTURES & set(getattr(item, "fixturenames", ())) and not starts_ray(item.nodeid)
    ]
    if unnamed:
        raise pytest.UsageError(
            f"tests that start Ray must say 'ray' in their file or test name: {unnamed}"
        )


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
