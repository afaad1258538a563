"""The batch loader: the same batches with or without DataLoader processes; those die with
their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest
import torch

from modelhopper._loader import batches, per_example


def _noisy(batch: torch.Tensor) -> torch.Tensor:
    return batch + torch.rand(batch.shape)


def test_batches_are_the_same_in_process_and_in_loader_processes() -> None:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20)
    indices = [np.array([3, 1, 4]), np.array([15, 9]), slice(10, 14)]
    made = {
        n: list(
            batches(
                x,
                y,
                indices,
                stage=None,
                transform=per_example(_noisy),
                seeds=[7, 8, 9],
                num_workers=n,
            )
        )  # fmt: skip
        for n in (0, 2)
    }
    for a, b in zip(made[0], made[2], strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert torch.equal(made[0][0].y, torch.tensor([3, 1, 4]))
    assert not torch.equal(made[0][0].x, torch.from_numpy(x[[3, 1, 4]]))  # noise was added


PASS_FOREVER = textwrap.dedent(
    """
    import time, numpy as np, torch
    from modelhopper._loader import batches

    def slow(batch):
        if batch[0, 0] >= 1:  # every batch after the first: busy, not watching its parent
            time.sleep(600)
        return batch

    x, y = np.zeros((10_000, 2), np.float32), np.zeros(10_000, np.int64)
    x[:, 0] = np.arange(10_000)
    indices = [slice(i, i + 1) for i in range(10_000)]
    for k, _ in enumerate(batches(x, y, indices, stage=None, transform=slow,
                                  seeds=list(range(10_000)), num_workers=1)):
        if k == 0:
            print("first batch", flush=True)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
def test_loader_processes_die_with_the_process_that_started_them() -> None:
    script = subprocess.Popen(
        [sys.executable, "-c", PASS_FOREVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert script.stdout is not None and script.stdout.readline().strip() == "first batch"
        loaders = psutil.Process(script.pid).children()
        assert len(loaders) == 1
    finally:
        os.kill(script.pid, signal.SIGKILL)
        script.wait()
    deadline = time.monotonic() + 30
    while loaders[0].is_running() and loaders[0].status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the loader process outlived its parent"
        time.sleep(0.05)


@pytest.mark.parametrize("gather_bytes", [1, 40, 10**9])  # one batch, a few, all at once
def test_gathered_batches_equal_the_batches_made_one_by_one(monkeypatch, gather_bytes):
    from modelhopper import _loader

    monkeypatch.setattr(_loader, "GATHER_BYTES", gather_bytes)
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    y = np.arange(20)
    order = np.random.default_rng(0).permutation(20)
    indices = [order[i : i + 6] for i in range(0, 20, 6)] + [slice(2, 9)]
    made = _loader._PassBatches(x, y, indices, None, None, seeds=[0] * len(indices))
    got = list(batches(x, y, indices, stage=None, transform=None, seeds=[]))  # seeds unread
    assert len(got) == len(indices)
    for k, batch in enumerate(got):
        assert torch.equal(batch.x, made[k].x) and torch.equal(batch.y, made[k].y)
        assert batch.x.shape == (len(y[indices[k]]), 3)
