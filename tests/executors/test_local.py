"""LocalExecutor passes the executor conformance suite, however its workers are started.

Workers are forked from the driver where that is safe, or from the zygote; either
way they must never re-run the user's script, which has no ``__main__`` guard.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import modelhopper as mh
from modelhopper.data._sharding import write_shards
from modelhopper.errors import ConfigError, ExecutorError
from modelhopper.executors import _local, _restarts
from modelhopper.executors._zygote import shared_zygote
from modelhopper.testing import ExecutorConformance, make_test_estimator
from modelhopper.testing._executor import _dataset, _task, _train


class TestLocalExecutor(ExecutorConformance):
    def new_executor(self):
        return mh.LocalExecutor(threads_per_worker=1)

    def worker_pid(self, executor, worker):
        return executor.pids[worker]

    def kill_worker(self, executor, worker):
        os.kill(executor.pids[worker], signal.SIGKILL)


class TestLocalExecutorZygote(TestLocalExecutor):
    """The same suite with every worker forked by the zygote (notebooks, several threads)."""

    def new_executor(self):
        return mh.LocalExecutor(threads_per_worker=2, start_method="zygote")


def test_auto_forks_only_when_it_is_safe(monkeypatch):
    executor = mh.LocalExecutor()
    monkeypatch.setattr(_local.threading, "active_count", lambda: 1)
    assert executor._method(1) == ("fork" if sys.platform == "linux" else "zygote")
    assert executor._method(2) == "zygote"  # an OpenMP pool in the driver would hang the child
    monkeypatch.setattr(_local.threading, "active_count", lambda: 2)
    assert executor._method(1) == "zygote"  # another thread may hold a lock forever


def test_a_gpu_build_of_torch_is_never_forked(monkeypatch):
    """Its autograd starts a thread per GPU at the first backward pass; a child forked
    after that cannot train (seen on a GPU machine: "Unable to handle autograd's
    threading in combination with fork-based multiprocessing")."""
    monkeypatch.setattr(_local.threading, "active_count", lambda: 1)
    monkeypatch.setattr(_local.torch.version, "cuda", "13.0")
    assert mh.LocalExecutor()._method(1) == "zygote"
    with pytest.raises(ConfigError, match="a CPU build of torch"):
        mh.LocalExecutor(start_method="fork")._method(1)


def test_bad_start_method_is_refused():
    with pytest.raises(ConfigError, match="start_method must be one of 'auto', 'fork', 'zygote'"):
        mh.LocalExecutor(start_method="spawn")


def test_a_factory_that_cannot_be_pickled_is_refused_in_one_line():
    lock = threading.Lock()

    def make_estimator(params):
        with lock:
            raise AssertionError("never called")

    with pytest.raises(ConfigError, match="make_estimator cannot be sent to the worker processes"):
        _local._pickle_factory(make_estimator)


def test_the_zygote_is_shared_by_later_runs():
    first = shared_zygote()
    first.wait_ready(timeout=300)
    assert shared_zygote() is first and first.alive


_SCRIPT = """
import pathlib, torch, torch.nn as nn
import modelhopper as mh

with open(pathlib.Path(__file__).with_name("imports.log"), "a") as log:
    log.write("ran\\n")                       # a side effect at import: must happen once

def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                        loss=nn.CrossEntropyLoss(), batch_size=64)

search = mh.GridSearch(make_estimator, {{"lr": mh.grid([0.003, 0.01])}}, epochs=2,
                       metric="val_accuracy", direction="maximize")
for _ in range(2):                           # a second fit reuses the started machinery
    result = search.fit(mh.datasets.digits(), n_workers=2,
                        executor=mh.LocalExecutor(start_method="{method}"))
    print("ok", len(result.msts), result.best.metrics["val_accuracy"] > 0.5)
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["auto", "zygote"])
def test_a_script_without_a_main_guard_runs(tmp_path, method):
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(method=method)))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["ok 2 True", "ok 2 True"]
    assert (tmp_path / "imports.log").read_text() == "ran\n"  # workers never re-ran it


_LONG_RUN = """
import torch, torch.nn as nn
import modelhopper as mh

def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                        loss=nn.CrossEntropyLoss(), batch_size=8)

search = mh.RandomSearch(make_estimator, {{"lr": mh.uniform(0.001, 0.01)}}, n_msts=4,
                         epochs=10_000, metric="val_accuracy", direction="maximize")
search.fit(mh.datasets.digits(), n_workers=2, executor=mh.LocalExecutor(start_method="{method}"))
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["auto", "zygote"])
def test_workers_never_outlive_a_killed_driver(tmp_path, method):
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "long.py"
    script.write_text(textwrap.dedent(_LONG_RUN.format(method=method)))
    driver = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob("modelhopper-runs/*/checkpoints/*/*.state")):
            assert time.monotonic() < deadline and driver.poll() is None, "no visit finished"
            time.sleep(0.05)
        processes = psutil.Process(driver.pid).children(recursive=True)  # workers (+ zygote)
        assert len(processes) >= 2
        driver.kill()
        driver.wait(timeout=60)
        _, alive = psutil.wait_procs(processes, timeout=60)
        assert not alive, f"processes outlived the driver: {alive}"
    finally:
        driver.kill()


def test_forcing_an_unsafe_fork_is_refused():
    with pytest.raises(ConfigError, match="start_method='fork' is unsafe here"):
        mh.LocalExecutor(start_method="fork", threads_per_worker=2).prepare(2)


_SNIPPET = """
import torch, torch.nn as nn
import modelhopper as mh
def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                        loss=nn.CrossEntropyLoss(), batch_size=64)

search = mh.GridSearch(make_estimator, {"lr": mh.grid([0.003, 0.01])}, epochs=2)
result = search.fit(mh.datasets.digits(), n_workers=2)
print("ok", len(result.msts), result.best.metrics["val_accuracy"] > 0.5)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["python -c", "interactive interpreter"])
def test_python_c_and_the_interactive_interpreter_need_no_main_guard(tmp_path, how):
    if how == "python -c":
        command, stdin = [sys.executable, "-c", _SNIPPET], None
    else:  # what a user types at the >>> prompt, line by line
        command, stdin = [sys.executable, "-i", "-q"], _SNIPPET + "\nexit()\n"
    done = subprocess.run(
        command, input=stdin, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "ok 2 True" in done.stdout, (done.stdout, done.stderr)


@pytest.mark.parametrize("window", [0, -1.0, float("nan"), "600", True])
def test_a_bad_restart_window_is_refused(window):
    with pytest.raises(ConfigError, match=r"restart_window must be a number of seconds > 0, got"):
        mh.LocalExecutor(restart_window=window)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(_dataset(), 2, tmp_path_factory.mktemp("shards"), seed=3)


def _kill_at_birth(monkeypatch, n: int) -> list[int]:
    """Kill the next n worker processes the moment they exist, before they get their shard."""
    killed: list[int] = []

    def killing(make):
        def make_and_kill(*args):
            process = make(*args)
            if len(killed) < n:
                os.kill(process.pid, signal.SIGKILL)
                killed.append(process.pid)
            return process

        return make_and_kill

    monkeypatch.setattr(_local, "_ForkedWorker", killing(_local._ForkedWorker))
    monkeypatch.setattr(_local, "_fork_from_zygote", killing(_local._fork_from_zygote))
    return killed


def _kill_idle(executor: mh.LocalExecutor, worker: int) -> None:
    """Kill an idle worker and wait until it is dead (its next visit finds it so)."""
    process = executor._processes[worker]
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=30)
    assert not process.is_alive()


@pytest.mark.parametrize("method", ["auto", "zygote"])
def test_workers_killed_while_starting_are_started_again(shards, monkeypatch, method):
    executor = mh.LocalExecutor(threads_per_worker=1, start_method=method, max_restarts=2)
    killed = _kill_at_birth(monkeypatch, 3)  # both first processes, then worker 0's replacement
    with executor:
        executor.start(shards, make_test_estimator)
        assert len(killed) == 3 and not set(killed) & set(executor.pids)
        assert executor.restarts == [2, 1]
        for worker in (0, 1):
            executor.submit(worker, _task(40 + worker, (_train(0, worker, 0),)))
        results = executor.wait()
        if len(results) == 1:
            results += executor.wait()
        assert [r.error for r in results] == [None, None] and not any(r.crashed for r in results)


def test_a_replacement_killed_while_starting_is_started_again(shards, monkeypatch):
    with mh.LocalExecutor(threads_per_worker=1, max_restarts=2) as executor:
        executor.start(shards, make_test_estimator)
        _kill_idle(executor, 1)
        killed = _kill_at_birth(monkeypatch, 1)
        task = _task(50, (_train(0, 1, 0),))
        executor.submit(1, task)
        (result,) = executor.wait()
        assert result.crashed and result.mst_id == 50 and len(killed) == 1
        assert executor.restarts == [0, 2]
        executor.submit(1, task)
        (result,) = executor.wait()
        assert result.error is None and not result.crashed


def test_the_restart_budget_is_a_rate_and_a_crash_loop_fails_clearly(shards, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(_restarts, "_clock", lambda: now[0])
    with mh.LocalExecutor(threads_per_worker=1, max_restarts=1, restart_window=10) as executor:
        executor.start(shards, make_test_estimator)
        for step in range(3):  # one death each 11 s: never two within the window
            _kill_idle(executor, 0)
            executor.submit(0, _task(60 + step, (_train(0, 0, 0),)))
            assert executor.wait()[0].crashed
            now[0] += 11
        assert executor.restarts == [3, 0]
        _kill_idle(executor, 0)
        executor.submit(0, _task(63, (_train(0, 0, 0),)))
        assert executor.wait()[0].crashed
        now[0] += 9  # the second death within 10 s
        _kill_idle(executor, 0)
        with pytest.raises(
            ExecutorError,
            match=r"worker 0 \(pid \d+\) died with exit code -9 while running MST 64; it died 2 "
            r"times \(max_restarts=1\) within 10 s \(restart_window\), so it is crash-looping; "
            r"if it was killed for memory, .*LocalExecutor\(max_restarts=\.\.\., "
            r"restart_window=\.\.\.\)",
        ):
            executor.submit(0, _task(64, (_train(0, 0, 0),)))


def test_a_killed_zygote_is_started_again_and_so_are_its_workers(shards):
    with mh.LocalExecutor(threads_per_worker=1, start_method="zygote") as executor:
        executor.start(shards, make_test_estimator)
        zygote = shared_zygote()
        os.kill(zygote.pid, signal.SIGKILL)  # its workers die with it
        task = _task(80, (_train(0, 0, 0),))
        executor.submit(0, task)
        (result,) = executor.wait()
        assert result.crashed and shared_zygote() is not zygote
        executor.submit(0, task)
        (result,) = executor.wait()
        assert result.error is None and not result.crashed
        assert executor.restarts[0] == 1


def test_poll_hands_back_a_visit_as_soon_as_its_result_is_in_the_pipe(shards):
    """The driver serves finished workers while it records: poll must see what wait would."""
    with mh.LocalExecutor(threads_per_worker=1) as executor:
        executor.start(shards, make_test_estimator)
        executor.submit(1, _task(60, (_train(0, 1, 0),)))
        conn = executor._processes[1].conn
        assert multiprocessing.connection.wait([conn], timeout=120)  # the result has arrived
        (result,) = executor.poll()
        assert (result.worker, result.mst_id, result.error) == (1, 60, None)
        assert executor.poll() == []
        with pytest.raises(ExecutorError, match="no visit in flight"):
            executor.wait()  # the polled visit is no longer in flight


def test_a_driver_where_jax_has_started_never_forks():
    pytest.importorskip("jax", reason="the keras extra brings jax")
    check = (
        "import threading, jax, modelhopper as mh\n"
        "from modelhopper.executors import _local\n"
        "threading.active_count = lambda: 1\n"
        "e = mh.LocalExecutor()\n"
        "before = _local._jax_started(), e._method(1)\n"
        "jax.numpy.ones(2).block_until_ready()  # its runtime and threads start now\n"
        "print(before, (_local._jax_started(), e._method(1)))\n"
    )  # in a process of its own: a started JAX runtime stays for the process's life
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(False, 'fork') (True, 'zygote')"


def test_executor_names_resolve_without_starting_anything():
    from modelhopper.executors import resolve_executor

    assert isinstance(resolve_executor("ray"), mh.RayExecutor)  # Ray starts with the run
    assert isinstance(resolve_executor(None), mh.LocalExecutor)
    with pytest.raises(mh.ConfigError, match="executor must be 'local', 'ray' or a BaseExecutor"):
        resolve_executor("gpu")


def _digits_mlp(p):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
                        loss=nn.CrossEntropyLoss(), batch_size=64)  # fmt: skip


def test_shared_validation_evaluates_each_epoch_where_its_training_ends(tmp_path):
    # One copy of the digits on 3 workers: with the validation parts shared, each
    # epoch is evaluated whole by the worker that trained its last shard, so the run
    # takes fewer visits; the MSTs train and score exactly as with them sharded.
    runs = {}
    for shared in (False, True):
        search = mh.GridSearch(_digits_mlp, {"lr": mh.grid([0.003, 0.01])}, epochs=2,
                               metric="val_accuracy", direction="maximize", seed=0)  # fmt: skip
        result = search.fit(
            mh.datasets.digits(), n_workers=3, progress=False,
            executor=mh.LocalExecutor(replicas=1, shared_validation=shared),
            store=f"sqlite:///{tmp_path}/{shared}.db", run_dir=tmp_path / f"run-{shared}",
        )  # fmt: skip
        metrics = {(m.params["lr"], e["epoch"]): (e["val_accuracy"], e["val_loss"], e["train_loss"])
                   for m in result.msts for e in m.history}  # fmt: skip
        runs[shared] = (result.stats.n_visits, metrics)
    (walked, sharded), (fewer, same) = runs[False], runs[True]
    assert len(same) == 4 and same == sharded
    assert fewer < walked


def test_a_validation_part_opens_from_its_files_alone(tmp_path):
    # What a node that cannot read a shard's folder gets for shared validation: the
    # validation arrays and shard.json, no training rows; they open as the shard's.
    import numpy as np

    from modelhopper.data._sharding import open_shard, open_validation_part, validation_files

    (info,) = write_shards(_dataset(), 1, tmp_path / "shards", seed=3)
    files = validation_files(info.path)
    assert sorted(files) == ["shard.json", "val_x.npy", "val_y.npy"]
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, blob in files.items():
        (copy / name).write_bytes(blob)
    whole, part = open_shard(info.path), open_validation_part(copy)
    assert np.array_equal(part.val_x, whole.val_x) and np.array_equal(part.val_y, whole.val_y)
    assert len(part.train_x) == len(part.train_y) == 0
    assert part.train_x.shape[1:] == whole.train_x.shape[1:]


def test_shared_validation_must_be_a_bool():
    with pytest.raises(ConfigError, match="shared_validation must be True or False"):
        mh.LocalExecutor(shared_validation=1)
