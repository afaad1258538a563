"""Crash recovery with real processes: kill the driver, kill a worker; the results do not change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import modelhopper as mh
from modelhopper.store import SQLStore

pytestmark = pytest.mark.slow

SPEC = textwrap.dedent(
    """
    import torch
    from torch import nn
    import modelhopper as mh

    def make_estimator(p):
        model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Dropout(0.1),
                              nn.Linear(p["hidden"], 10))
        return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                            loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=16)

    space = {"hidden": mh.grid([32, 64]), "lr": mh.grid([1e-3, 3e-3])}
    data = mh.datasets.digits
    search = mh.GridSearch(make_estimator, space, epochs=4, metric="val_accuracy",
                           direction="maximize", seed=5)
    """
)


def _final_metrics(result: mh.Result) -> dict[int, list[dict]]:
    history = result.history().drop(columns=["train_seconds", "eval_seconds"])
    return {mst: rows.to_dict("records") for mst, rows in history.groupby("mst_id")}


def _wait_for_steps(url: str, name: str, n: int, timeout: float = 120) -> None:
    """Block until the run has recorded at least n steps (polling the store the driver writes)."""
    store = SQLStore(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if len(store.list_steps(name)) >= n:
                    return
            except mh.StoreError:
                pass  # the run is not in the store yet
            time.sleep(0.05)
        raise AssertionError(f"run {name} did not reach {n} steps in {timeout} s")
    finally:
        store.close()


# The spec run as ``modelhopper run`` runs it, in a driver process of its own that
# kill -9s itself right after handing out its third visit. Counting visits (not polling
# the store from outside) makes the kill land mid-run whatever the load: the run has at
# least one visit per MST (four), and with the data on every worker the last visits can
# chain the rest of the run into a few hundred milliseconds.
DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from modelhopper.cli import load_spec, spec_objects
    from modelhopper.testing import ChaosExecutor, KillPlan

    spec, url, run_dir = sys.argv[1:]
    search, data = spec_objects(load_spec(Path(spec)), Path(spec))
    search.fit(data, n_workers=2, run_name="crashy", store=url, run_dir=run_dir,
               executor=ChaosExecutor(KillPlan(driver=3)))
    """
)


def _run_and_kill_the_driver(spec, url: str, run_dir) -> None:
    done = subprocess.run([sys.executable, "-c", DRIVER, str(spec), url, str(run_dir)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, f"the driver was not killed: {done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, as the CLI would run it."""
    folder = tmp_path_factory.mktemp("reference")
    spec = folder / "spec.py"
    spec.write_text(SPEC)
    from modelhopper.cli import load_spec, spec_objects

    search, data = spec_objects(load_spec(spec), spec)
    return search.fit(
        data,
        n_workers=2,
        run_name="reference",
        store=f"sqlite:///{folder}/db.sqlite",
        run_dir=folder / "run",
    )


# The killed driver held the (small) data on every worker; a resume may hold one copy:
# which worker runs a step never changes what it computes.
@pytest.mark.parametrize("replicas", ["auto", 1])
def test_resume_after_the_driver_is_killed_gives_the_same_results(reference, tmp_path, replicas):
    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    _run_and_kill_the_driver(spec, url, tmp_path / "run")
    store = SQLStore(url)
    done_before = len(store.list_steps("crashy"))
    assert store.get_experiment("crashy").status is mh.store.RunStatus.RUNNING
    assert done_before < 4 * 4 * 4  # it really was interrupted mid-run
    store.close()
    resumed = mh.resume("crashy", store=url, executor=mh.LocalExecutor(replicas=replicas))
    assert resumed.status == "completed"
    got, want = _final_metrics(resumed), _final_metrics(reference)
    for mst in want:
        for a, b in zip(got[mst], want[mst], strict=True):
            assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    kinds = [e.kind for e in SQLStore(url).list_events("crashy")]
    assert mh.store.EventKind.RESUMED in kinds and kinds[-1] is mh.store.EventKind.COMPLETED


class _KillWorkerOnce(threading.Thread):
    """Kills worker 0 with SIGKILL once the run has recorded a few steps.

    Runs it watches keep one copy of the data (``replicas=1``): every worker then has
    visits left until the end, so a kill after a few steps always lands mid-run (a
    worker holding every shard can chain its remaining epochs into one visit and be
    done before the killer looks).
    """

    def __init__(self, executor: mh.LocalExecutor, url: str, name: str, times: int = 1):
        super().__init__(daemon=True)
        self.executor, self.url, self.name, self.times = executor, url, name, times
        self.killed: list[int] = []

    def run(self) -> None:
        for n in range(self.times):
            _wait_for_steps(self.url, self.name, 6 + 4 * n)
            pid = self.executor.pids[0]
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
            deadline = time.monotonic() + 60
            while self.executor.pids[:1] == [pid] and time.monotonic() < deadline:
                time.sleep(0.01)  # until it was replaced (or the run gave up)


def test_a_killed_worker_is_replaced_and_results_do_not_change(reference, tmp_path):
    from modelhopper.cli import load_spec, spec_objects

    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    search, data = spec_objects(load_spec(spec), spec)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    executor = mh.LocalExecutor(max_restarts=2, replicas=1)
    killer = _KillWorkerOnce(executor, url, "workerkill")
    killer.start()
    result = search.fit(
        data,
        n_workers=2,
        executor=executor,
        run_name="workerkill",
        store=url,
        run_dir=tmp_path / "run",
    )
    killer.join(timeout=5)
    assert len(killer.killed) == 1
    assert _final_metrics(result) == _final_metrics(reference)
    events = SQLStore(url).list_events("workerkill")
    assert any(e.kind is mh.store.EventKind.WORKER_RESTARTED and e.worker == 0 for e in events)


def test_a_worker_dying_too_often_fails_the_run_and_keeps_the_record(tmp_path):
    from modelhopper.cli import load_spec, spec_objects

    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    search, data = spec_objects(load_spec(spec), spec)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    executor = mh.LocalExecutor(max_restarts=0, replicas=1)
    killer = _KillWorkerOnce(executor, url, "fragile")
    killer.start()
    with pytest.raises(mh.ExecutorError, match=r"worker 0 .* died 1 times \(max_restarts=0\)"):
        search.fit(
            data,
            n_workers=2,
            executor=executor,
            run_name="fragile",
            store=url,
            run_dir=tmp_path / "run",
        )
    store = SQLStore(url)
    assert store.get_experiment("fragile").status is mh.store.RunStatus.FAILED
    assert len(store.list_steps("fragile")) >= 6


IMAGE_SPEC = textwrap.dedent(
    """
    import torch
    from torch import nn
    import modelhopper as mh

    def flip(image):  # one uint8 (1, 28, 28) image, mirrored at random
        return image.flip(-1) if torch.rand(()) < 0.5 else image

    def make_estimator(p):
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.1),
                              nn.Linear(32, 10))
        return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                            loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=16,
                            train_transform=mh.per_example(lambda x: flip(x).float() / 255),
                            eval_transform=lambda x: x.float() / 255, num_workers=p["workers"])

    space = {"lr": mh.grid([1e-3, 3e-3]), "workers": mh.grid([0, 1])}
    data = mh.Dataset.from_image_folder(
        mh.datasets.fashion_mnist_folder(FOLDER, limit=400), fractions=(0.75, 0.25, 0.0)
    )
    search = mh.GridSearch(make_estimator, space, epochs=4, metric="val_accuracy",
                           direction="maximize", seed=5)
    """
)


def test_resume_of_an_image_folder_run_with_augmentation_gives_the_same_results(tmp_path):
    """Images decoded on the workers, augmented at random: a resumed run changes nothing."""
    spec = tmp_path / "spec.py"
    spec.write_text(IMAGE_SPEC.replace("FOLDER", repr(str(tmp_path / "images"))))
    url = f"sqlite:///{tmp_path}/db.sqlite"
    from modelhopper.cli import load_spec, spec_objects

    search, data = spec_objects(load_spec(spec), spec)
    reference = search.fit(data, n_workers=2, run_name="reference", store=url,
                           run_dir=tmp_path / "reference")  # fmt: skip
    _run_and_kill_the_driver(spec, url, tmp_path / "run")
    store = SQLStore(url)
    assert len(store.list_steps("crashy")) < 4 * 4 * 4  # it really was interrupted mid-run
    store.close()
    resumed = mh.resume("crashy", store=url)
    assert resumed.status == "completed"
    assert _final_metrics(resumed) == _final_metrics(reference)
