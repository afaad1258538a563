"""RayExecutor on one node: the executor conformance suite; results equal LocalExecutor's."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.estimator import state_from_bytes
from modelhopper.testing import ExecutorConformance

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_single_node")]
# Seconds for the actors to start: each is a new process that imports torch, slow
# when another test file keeps both cores busy (the default is 120).
START_TIMEOUT = 600.0


class TestRayExecutor(ExecutorConformance):
    def new_executor(self):
        return mh.RayExecutor(resources_per_worker={"CPU": 1}, start_timeout=START_TIMEOUT)

    def worker_pid(self, executor, worker):
        return executor.pids[worker]

    def kill_worker(self, executor, worker):
        os.kill(executor.pids[worker], signal.SIGKILL)


def make_estimator(p):
    model = nn.Sequential(
        nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Dropout(0.2), nn.Linear(p["hidden"], 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    return mh.Estimator(
        model=model,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=32,
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
    )


def _search():
    space = {"hidden": mh.grid([16, 48]), "lr": mh.grid([1e-2, 3e-3])}
    return mh.GridSearch(
        make_estimator, space, epochs=2, metric="val_accuracy", direction="maximize", seed=11
    )


def _final(result: mh.Result) -> dict[int, tuple[list[dict], dict[str, torch.Tensor]]]:
    history = result.history().drop(columns=["train_seconds", "eval_seconds"])
    out = {}
    for mst in result.msts:
        with open(mst.checkpoint, "rb") as f:
            weights = state_from_bytes(f.read())["model"]
        out[mst.id] = (history[history.mst_id == mst.id].to_dict("records"), weights)
    return out


def _assert_same_training(got: mh.Result, want: mh.Result) -> None:
    got_final, want_final = _final(got), _final(want)
    assert got_final.keys() == want_final.keys()
    for mst, (history, weights) in want_final.items():
        assert got_final[mst][0] == history
        for name, tensor in weights.items():
            assert torch.equal(got_final[mst][1][name], tensor), (mst, name)


def test_ray_trains_bit_for_bit_like_local(tmp_path):
    data = mh.datasets.digits(seed=0)
    local = _search().fit(data, n_workers=2, run_dir=tmp_path / "local", progress=False,
                          executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip
    executor = mh.RayExecutor(threads_per_worker=1, start_timeout=START_TIMEOUT)
    on_ray = _search().fit(data, n_workers=2, run_dir=tmp_path / "ray", progress=False,
                           executor=executor)  # fmt: skip
    _assert_same_training(on_ray, local)
    assert executor.devices == ["cpu", "cpu"]  # no GPU asked for: the actors train on CPU
    assert on_ray.stats.n_hops > 0 and on_ray.stats.hop_bytes > 0
    assert sum(on_ray.stats.resident_shard_bytes) == on_ray.stats.dataset_bytes
    assert on_ray.stats.shard_bytes_moved == 0  # every actor read its shard in place


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(mh.ConfigError, match=r"resources_per_worker\['CPU'\] must be a number"):
        mh.RayExecutor(resources_per_worker={"CPU": -1})
    with pytest.raises(mh.ConfigError, match="data must be one of 'auto', 'path', 'ship'"):
        mh.RayExecutor(data="copy")
    with pytest.raises(mh.ConfigError, match="max_restarts must be an int >= 0"):
        mh.RayExecutor(max_restarts=-1)


def test_workers_that_cannot_be_placed_fail_with_the_free_resources(tmp_path):
    executor = mh.RayExecutor(resources_per_worker={"CPU": 64}, start_timeout=3)
    data = mh.datasets.digits(seed=0)
    started = time.monotonic()
    with pytest.raises(mh.ExecutorError, match=r"did not check their shard paths within 3 s.*free"):
        _search().fit(data, n_workers=2, run_dir=tmp_path, progress=False, executor=executor)
    # Shutdown asks no actor that never started to close (it waited 10 s for an answer
    # that could not come): the error comes right after the start timeout.
    assert time.monotonic() - started < 3 + 9


def _squares(x: torch.Tensor, *, scale: float) -> torch.Tensor:
    return torch.cat([x * scale, (x * scale) ** 2], dim=1)


def make_estimator_with_representation(p):
    model = nn.Sequential(nn.Linear(128, 24), nn.ReLU(), nn.Linear(24, 10))
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=32,
        representation=mh.Representation("squares", _squares, params={"scale": p["scale"]}),
    )


def test_representations_are_materialised_on_ray_workers_and_train_the_same(tmp_path):
    space = {"scale": mh.grid([0.1]), "lr": mh.grid([1e-2, 3e-3])}  # two MSTs share one
    search = lambda: mh.GridSearch(  # noqa: E731
        make_estimator_with_representation, space, epochs=2, metric="val_accuracy", seed=3
    )
    data = mh.datasets.digits(seed=0)
    local = search().fit(data, n_workers=2, run_dir=tmp_path / "local", progress=False,
                         executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip
    disk_only = mh.MaterialiseBudget(memory_bytes=0)  # so the copies show as files
    on_ray = search().fit(data, n_workers=2, run_dir=tmp_path / "ray", progress=False,
                          keep_shards=True, executor=mh.RayExecutor(threads_per_worker=1,
                          materialise=disk_only, start_timeout=START_TIMEOUT))  # fmt: skip
    _assert_same_training(on_ray, local)
    for shard in range(2):  # each Ray worker materialised its shard once for both MSTs
        features = tmp_path / "ray" / "shards" / f"shard-{shard}" / "features"
        assert len(list(features.glob("*.npy"))) == 2  # train and val


def _image_estimator(p):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        batch_size=32,
        train_transform=mh.per_example(lambda x: x.flip(-1).float() / 255),
        eval_transform=lambda x: x.float() / 255,
    )


def test_ray_builds_image_shards_as_tasks_and_trains_like_local(tmp_path):
    """Shards of an image folder are built by Ray tasks, not the driver, and are the same."""
    executor = mh.RayExecutor(threads_per_worker=1, data="path", start_timeout=START_TIMEOUT)
    pids = executor.build_shards([os.getpid, os.getpid])
    assert pids is not None and os.getpid() not in pids  # ran in Ray's worker processes
    root = mh.datasets.fashion_mnist_folder(tmp_path / "images", limit=200)
    data = mh.Dataset.from_image_folder(root, fractions=(0.75, 0.25, 0.0))
    search = mh.GridSearch(_image_estimator, {"lr": mh.grid([0.05, 0.01])}, epochs=1, seed=3)
    local = search.fit(data, n_workers=2, run_dir=tmp_path / "local",
                       executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip
    on_ray = search.fit(data, n_workers=2, run_dir=tmp_path / "ray", executor=executor)
    assert on_ray.provenance["data_sha256"] == local.provenance["data_sha256"]
    _assert_same_training(on_ray, local)


def _kill_and_wait(pid: int) -> None:
    """SIGKILL an idle actor's process and wait until it is gone (its next visit finds it so)."""
    process = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    _, alive = psutil.wait_procs([process], timeout=60)
    assert not alive


def test_the_restart_budget_is_a_rate_and_a_crash_loop_fails_clearly(tmp_path, monkeypatch):
    from modelhopper.data._sharding import write_shards
    from modelhopper.errors import ExecutorError
    from modelhopper.executors import _restarts
    from modelhopper.testing import make_test_estimator
    from modelhopper.testing._executor import _dataset, _task, _train

    shards = write_shards(_dataset(), 2, tmp_path, seed=0)
    now = [1000.0]
    monkeypatch.setattr(_restarts, "_clock", lambda: now[0])
    executor = mh.RayExecutor(max_restarts=1, restart_window=10, start_timeout=START_TIMEOUT)
    with executor:
        executor.start(shards, make_test_estimator)
        for step in range(2):  # one death each 11 s: never two within the window
            _kill_and_wait(executor.pids[0])
            executor.submit(0, _task(70 + step, (_train(0, 0, 0),)))
            assert executor.wait()[0].crashed
            now[0] += 11
        assert executor.restarts == [2, 0]
        _kill_and_wait(executor.pids[0])
        executor.submit(0, _task(72, (_train(0, 0, 0),)))
        assert executor.wait()[0].crashed
        now[0] += 9  # the second death within 10 s
        _kill_and_wait(executor.pids[0])
        with pytest.raises(ExecutorError, match=r"max_restarts=1\) within 10 s .* crash-looping"):
            executor.submit(0, _task(73, (_train(0, 0, 0),)))
            executor.wait()


def _dies_once(marker: str) -> int:
    """A shard build whose first process is killed mid-way; the retry finishes."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def test_a_shard_build_whose_process_dies_runs_again_on_the_cluster(tmp_path):
    import functools
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers lack tests/
    try:
        executor = mh.RayExecutor(data="path", start_timeout=START_TIMEOUT)
        marker = str(tmp_path / "died")
        pids = executor.build_shards([functools.partial(_dies_once, marker), os.getpid])
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert pids is not None and os.path.exists(marker)  # built by Ray, after one death
    assert os.getpid() not in pids


def test_ray_trains_group_epochs_like_local(tmp_path):
    """Hybrid mode on Ray: the members meet through a store the driver serves and sum
    through gloo; two members add in either order to the same bits, so the run equals
    LocalExecutor's (whose members sum through shared memory)."""
    from modelhopper.store import EventKind, open_store

    data = mh.datasets.digits(seed=0)
    space = {"hidden": mh.grid([16]), "lr": mh.grid([1e-2])}

    def search():
        return mh.GridSearch(make_estimator_without_dropout, space, epochs=2, seed=11,
                             hybrid="on")  # fmt: skip

    local = search().fit(data, n_workers=2, run_dir=tmp_path / "local", progress=False,
                         executor=mh.LocalExecutor(threads_per_worker=1, replicas=1))  # fmt: skip
    url = f"sqlite:///{tmp_path / 'ray.db'}"
    executor = mh.RayExecutor(threads_per_worker=1, start_timeout=START_TIMEOUT)
    on_ray = search().fit(data, n_workers=2, run_dir=tmp_path / "ray", progress=False,
                          executor=executor, store=url, run_name="ray-groups")  # fmt: skip
    _assert_same_training(on_ray, local)
    events = open_store(url).list_events("ray-groups")
    assert sum(e.kind is EventKind.GROUP_EPOCH for e in events) == 2


def make_estimator_without_dropout(p):
    model = nn.Sequential(nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10))
    return mh.Estimator(model, torch.optim.Adam(model.parameters(), lr=p["lr"]),
                        nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32)  # fmt: skip


def test_ray_runs_logical_shards_with_replicas_like_local(tmp_path):
    """4 logical shards on 2 actors, each shard on both (replicas=2): any holder runs a
    step, and the run equals LocalExecutor's with one copy (the plan does not depend on
    who holds what)."""
    data = mh.datasets.digits(seed=0)
    local = _search().fit(data, n_workers=2, n_shards=4, run_dir=tmp_path / "local",
                          progress=False,
                          executor=mh.LocalExecutor(threads_per_worker=1, replicas=1))  # fmt: skip
    executor = mh.RayExecutor(threads_per_worker=1, replicas=2, start_timeout=START_TIMEOUT)
    assert executor.holdings([None] * 4, 2) == ((0, 1, 2, 3),) * 2  # type: ignore[list-item]
    on_ray = _search().fit(data, n_workers=2, n_shards=4, run_dir=tmp_path / "ray",
                           progress=False, executor=executor)  # fmt: skip
    _assert_same_training(on_ray, local)
    # Every actor holds the whole dataset: two copies.
    assert list(on_ray.stats.resident_shard_bytes) == [on_ray.stats.dataset_bytes] * 2
    assert len(executor.shard_paths) == 8


def test_a_ray_executor_adds_rehomes_and_removes_workers(tmp_path):
    """At the executor: a joiner opens its shards (here from the path every actor reads),
    a re-homed worker trains on a shard it gained like its first holder and drops one it
    lost, and a removed worker's actor is gone."""
    from modelhopper.data._sharding import write_shards
    from modelhopper.testing._executor import _dataset, _task, _train, make_test_estimator

    shards = write_shards(_dataset(), 4, tmp_path / "shards", seed=3)
    with mh.RayExecutor(threads_per_worker=1, start_timeout=START_TIMEOUT) as executor:
        executor.start(shards, make_test_estimator, n_workers=2)
        assert executor.resident_shard_bytes == [shards[0].nbytes + shards[2].nbytes,
                                                 shards[1].nbytes + shards[3].nbytes]  # fmt: skip
        task = _task(1, (_train(0, 1, 0),))
        executor.submit(1, task)
        (first,) = executor.wait()
        assert executor.add_worker([1], [1]) == 2 and executor.n_workers == 3
        assert executor.resident_shard_bytes[2] == shards[1].nbytes
        executor.submit(2, task)  # the same visit on the joiner: the same result
        (joined,) = executor.wait()
        assert joined.error is None
        assert joined.outcomes[0].result.loss_sum == first.outcomes[0].result.loss_sum
        executor.rehome(1, [3], [3])  # worker 1 hands shard 1 to the joiner
        assert executor.resident_shard_bytes[1] == shards[3].nbytes
        executor.submit(0, _task(2, (_train(0, 2, 0),)))
        assert executor.wait()[0].error is None
        pid = executor.pids[0]
        executor.remove_worker(0)
        assert executor.resident_shard_bytes[0] == 0
        _wait_until_dead(pid)
        executor.rehome(1, [0, 2, 3], [0, 2, 3])  # its shards go to worker 1
        executor.submit(1, _task(3, (_train(0, 0, 0), _train(0, 2, 1))))
        assert executor.wait()[0].error is None


def _wait_until_dead(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"the removed worker's process {pid} still runs"
        time.sleep(0.1)


def test_a_shard_whose_copy_fails_comes_from_the_driver_instead(tmp_path):
    """data='ship': worker 2 takes shard 0, held only by worker 0, whose actor was killed:
    the copy from it fails, and the shard comes from the driver's files instead. The
    killed actor could not delete its copy of shard 0; the next actor started on its
    node does, and leaves the live actors' copies alone."""
    from pathlib import Path

    from modelhopper.data._sharding import write_shards
    from modelhopper.testing._executor import _dataset, _task, _train, make_test_estimator

    shards = write_shards(_dataset(), 3, tmp_path / "shards", seed=3)
    with mh.RayExecutor(data="ship", threads_per_worker=1, start_timeout=START_TIMEOUT) as ex:
        ex.start(shards, make_test_estimator, n_workers=3)
        shipped = ex.shipped_bytes
        pid = ex.pids[0]
        left = [Path(p) for p in ex.shard_paths if f"/{pid}-" in p]
        assert left and all(p.is_dir() for p in left)
        os.kill(pid, signal.SIGKILL)
        _wait_until_dead(pid)
        ex.rehome(2, [0, 2], [0, 2])
        assert ex.copied_bytes == 0 and ex.shipped_bytes > shipped  # sent again, by the driver
        assert ex.resident_shard_bytes[2] == shards[0].nbytes + shards[2].nbytes
        ex.submit(2, _task(1, (_train(0, 0, 0), _train(0, 2, 1))))
        assert ex.wait()[0].error is None
        live = [Path(p) for p in ex.shard_paths if f"/{pid}-" not in p]
        ex.add_worker([1], [1])
        assert not any(p.exists() for p in left)
        assert live and all(p.is_dir() for p in live)


class _Gated(nn.Module):
    """Trains only once ``gate`` (a file) exists: a visit that stays busy until told."""

    def __init__(self, inner: nn.Module, gate: str) -> None:
        super().__init__()
        self.inner, self.gate = inner, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while not os.path.exists(self.gate):
            time.sleep(0.01)
        return self.inner(x)


def _gated_estimator(params):
    from modelhopper.testing._executor import make_test_estimator

    estimator = make_test_estimator(params)
    if "gate" not in params:
        return estimator
    model = _Gated(estimator.model, params["gate"])
    return mh.Estimator(
        model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=16,
    )  # fmt: skip


def test_a_busy_holder_copies_a_shard_to_a_joiner_while_its_visit_runs(tmp_path):
    """data='ship': shard 0 lives only on worker 0's actor, which is in a visit that
    does not end until the test says so. A worker that joins holding shard 0 gets its copy
    from that actor at once (its copy thread), not after the visit: the driver's
    add_worker returns while the visit still runs."""
    import threading

    from modelhopper.data._sharding import write_shards
    from modelhopper.testing._executor import _dataset, _task, _train

    gate = tmp_path / "gate"
    shards = write_shards(_dataset(), 2, tmp_path / "shards", seed=3)
    with mh.RayExecutor(data="ship", threads_per_worker=1, start_timeout=START_TIMEOUT) as ex:
        ex.start(shards, _gated_estimator, n_workers=2)
        ex.submit(0, _task(1, (_train(0, 0, 0),), gate=str(gate)))
        joined: list[int] = []
        adding = threading.Thread(target=lambda: joined.append(ex.add_worker([0], [0])))
        adding.start()
        adding.join(timeout=START_TIMEOUT)  # a slow start under load, not a wait on the gate
        waited = adding.is_alive()
        gate.touch()  # the visit may end now (and a blocked add_worker with it)
        adding.join(timeout=START_TIMEOUT)
        assert not waited, "add_worker waited for the holder's visit to end"
        assert joined == [2] and ex.copied_bytes == shards[0].nbytes
        assert ex.resident_shard_bytes[2] == shards[0].nbytes
        (busy,) = ex.wait()
        assert busy.error is None
        ex.submit(2, _task(1, (_train(0, 0, 0),), gate=str(gate)))  # the copy trains the same
        (copied,) = ex.wait()
        assert copied.outcomes[0].result.loss_sum == busy.outcomes[0].result.loss_sum


def test_shared_validation_on_ray_trains_like_local_in_fewer_visits(tmp_path):
    """Every actor reads every shard's validation part (here in place: one node), so each
    epoch is evaluated where its training ends: the same metrics as LocalExecutor with
    the parts sharded, in fewer visits."""
    data = mh.datasets.digits(seed=0)
    local = _search().fit(data, n_workers=3, run_dir=tmp_path / "local", progress=False,
                          executor=mh.LocalExecutor(threads_per_worker=1, replicas=1))  # fmt: skip
    executor = mh.RayExecutor(threads_per_worker=1, shared_validation=True,
                              start_timeout=START_TIMEOUT)  # fmt: skip
    on_ray = _search().fit(data, n_workers=3, run_dir=tmp_path / "ray", progress=False,
                           executor=executor)  # fmt: skip
    _assert_same_training(on_ray, local)
    assert on_ray.stats.n_visits < local.stats.n_visits
    assert executor.copied_bytes == executor.shipped_bytes == 0  # read where they lie
    assert on_ray.stats.shard_bytes_moved == 0


def test_shared_validation_parts_are_copied_from_holders_and_kept_through_rehoming(tmp_path):
    """data='ship' (no node reads the run directory): each actor gets the validation part
    of every shard it does not hold, only that, copied from the shard's holder; it then
    evaluates those shards exactly as their holders do. A worker that hands a shard on
    keeps its validation part (no copy); one that gains a shard drops its part."""
    from modelhopper.data._sharding import validation_files, write_shards
    from modelhopper.testing._executor import _dataset, _evaluate, _sums, _task, make_test_estimator

    shards = write_shards(_dataset(), 3, tmp_path / "shards", seed=3)
    part = [sum(len(b) for b in validation_files(info.path).values()) for info in shards]
    with mh.RayExecutor(data="ship", threads_per_worker=1, shared_validation=True,
                        start_timeout=START_TIMEOUT) as executor:  # fmt: skip
        executor.start(shards, make_test_estimator, n_workers=3)
        assert executor.copied_bytes == 2 * sum(part)  # each part to the two non-holders
        assert executor.resident_shard_bytes == [info.nbytes for info in shards]

        def evaluate_shard_1(worker: int) -> tuple:
            executor.submit(worker, _task(1, (_evaluate(0, 1, 0),)))
            (result,) = executor.wait()
            assert result.error is None, result.error
            return _sums(result.outcomes[0].result)

        by_holder = evaluate_shard_1(1)
        assert evaluate_shard_1(0) == evaluate_shard_1(2) == by_holder
        copied = executor.copied_bytes
        executor.rehome(2, [1, 2], [1, 2])  # worker 2 gains shard 1 (its whole copy) ...
        executor.rehome(1, [2], [2])  # ... and worker 1 hands it on, for shard 2
        moved = copied + shards[1].nbytes + shards[2].nbytes
        assert executor.copied_bytes == moved  # no validation part copied again
        assert evaluate_shard_1(1) == evaluate_shard_1(2) == by_holder


def test_a_kept_validation_part_is_linked_and_outlives_its_shard_copy(tmp_path, monkeypatch):
    """A Ray worker handing on a shard it held as a copy keeps the validation part on its
    node by hard-linking its files (no bytes read into memory), then deletes the copy."""
    import shutil
    import tempfile

    import numpy as np

    from modelhopper.data._sharding import open_shard, open_validation_part, write_shards
    from modelhopper.executors._ray import _link_validation
    from modelhopper.testing._executor import _dataset

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))
    (info,) = write_shards(_dataset(), 1, tmp_path / "copy", seed=3)
    whole = open_shard(info.path)
    val_x, val_y = np.array(whole.val_x), np.array(whole.val_y)
    kept = _link_validation(info.path, "validation-0")
    assert sorted(os.listdir(kept)) == ["shard.json", "val_x.npy", "val_y.npy"]
    assert os.stat(kept + "/val_x.npy").st_ino == os.stat(info.path + "/val_x.npy").st_ino
    del whole
    shutil.rmtree(info.path)
    part = open_validation_part(kept)
    assert np.array_equal(part.val_x, val_x) and np.array_equal(part.val_y, val_y)
