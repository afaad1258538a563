"""States that hop through shared-memory files: names on the pipes, files freed with their refs."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelhopper as mh
from modelhopper.data._sharding import write_shards
from modelhopper.executors import state_bytes
from modelhopper.executors._shm import ShmFolder, ShmState, ShmWriter, shm_root
from modelhopper.testing import make_test_estimator
from modelhopper.testing._executor import _dataset, _task, _train

pytestmark = pytest.mark.skipif(shm_root() is None, reason="needs a writable /dev/shm")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(_dataset(), 2, tmp_path_factory.mktemp("shards"), seed=0)


def test_a_state_hops_as_a_file_that_lives_as_long_as_the_drivers_reference(shards):
    with mh.LocalExecutor(threads_per_worker=1) as executor:
        executor.start(shards, make_test_estimator)
        folder = executor._states.path
        executor.submit(0, _task(1, (_train(0, 0, 0),)))
        (first,) = executor.wait()
        assert isinstance(first.state, ShmState) and Path(first.state.path).parent == folder
        assert first.state.nbytes == len(state_bytes(first.state))
        # the next worker reads the file itself; the driver passes only the name
        executor.submit(1, _task(1, (_train(0, 1, 1),), state=first.state))
        (second,) = executor.wait()
        assert second.error is None and Path(second.state.path).exists()
        path = first.state.path
        del first
        gc.collect()
        assert not Path(path).exists()  # dropped by the driver: freed
    assert not folder.exists()  # the executor's folder goes with it


def test_shared_memory_and_pipes_train_the_same(tmp_path):
    space = {"lr": mh.grid([0.01, 0.05])}

    def fit(shared_memory: bool):
        search = mh.GridSearch(make_digits_estimator, space, epochs=2, seed=0)
        return search.fit(
            mh.datasets.digits(), n_workers=2, run_dir=tmp_path / str(shared_memory),
            store=f"sqlite:///{tmp_path}/{shared_memory}.db",
            # One copy, so states hop (small data would be on every worker: no hops).
            executor=mh.LocalExecutor(shared_memory=shared_memory, replicas=1),
        )  # fmt: skip

    def metrics(result):  # each epoch's numbers, without its timings
        return [[{k: v for k, v in row.items() if "seconds" not in k} for row in m.history]
                for m in result.msts]  # fmt: skip

    shm, pipes = fit(True), fit(False)
    assert metrics(shm) == metrics(pipes)
    assert shm.stats.hop_bytes == pipes.stats.hop_bytes > 0


def make_digits_estimator(p):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return mh.Estimator(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32,
    )  # fmt: skip


def test_a_copy_in_another_process_never_deletes_the_file(tmp_path):
    path = tmp_path / "s.state"
    path.write_bytes(b"x")
    ShmState(str(path), 1, owner=os.getpid() + 10_000_000)  # not ours: dropped at once
    gc.collect()
    assert path.exists()
    ShmState(str(path), 1, owner=os.getpid())
    gc.collect()
    assert not path.exists()


def test_folders_of_dead_drivers_are_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = tmp_path / f"modelhopper-states-{dead.stdout.strip()}-abc"
    orphan.mkdir()
    live = tmp_path / f"modelhopper-states-{os.getpid()}-def"
    live.mkdir()
    folder = ShmFolder(tmp_path)
    assert not orphan.exists() and live.exists() and folder.path.exists()
    folder.remove()
    assert not folder.path.exists()


def test_a_state_that_cannot_be_written_goes_over_the_pipe(tmp_path):
    writer = ShmWriter(str(tmp_path / "missing"), os.getpid(), worker=0)
    assert writer.write(b"state") == b"state"
    ok = ShmWriter(str(tmp_path), os.getpid(), worker=0).write(b"state")
    assert isinstance(ok, ShmState) and ok.fetch() == b"state"
