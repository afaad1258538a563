"""LocalExecutor(device=...): where the workers' models train.

On a machine without a GPU these run on ``device="cpu"`` (named explicitly: the same
bits as the default); on a GPU machine (a lent one runs this file) on ``"cuda"``,
where the kernels round differently, so the results are close, not equal.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelhopper as mh

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    return mh.Estimator(model, optimizer, nn.CrossEntropyLoss(), metrics=["accuracy"],
                        batch_size=32)  # fmt: skip


def _fit(tmp_path, name, hybrid, executor):
    search = mh.GridSearch(
        make_estimator, {"lr": mh.grid([1e-2] if hybrid == "on" else [3e-3, 1e-2])}, epochs=2,
        seed=3, hybrid=hybrid,
    )  # fmt: skip
    return search.fit(mh.datasets.digits(seed=0), n_workers=2, run_name=name,
                      run_dir=tmp_path / name, executor=executor)  # fmt: skip


@pytest.mark.parametrize("hybrid", ["off", "on"], ids=["mop", "group-epochs"])
def test_workers_train_on_the_device_given_and_states_hop_between_them(tmp_path, hybrid):
    """Two workers on one copy: every sub-epoch hops an MST's state to the other worker
    (MOP), or both train one MST's epoch together (groups, gradients summed on the host)."""
    placed = mh.LocalExecutor(threads_per_worker=1, replicas=1, device=DEVICE)
    got = _fit(tmp_path, "placed", hybrid, placed)
    want = _fit(tmp_path, "default", hybrid, mh.LocalExecutor(threads_per_worker=1, replicas=1))
    assert placed.devices == ([f"{DEVICE}:0"] * 2 if DEVICE == "cuda" else ["cpu"] * 2)
    assert got.stats.n_hops > 0
    for record, reference in zip(got.msts, want.msts, strict=True):
        assert record.status is mh.MSTStatus.COMPLETED, record.error
        assert len(record.history) == 2
        for row, expected in zip(record.history, reference.history, strict=True):
            if DEVICE == "cpu":
                assert row["val_loss"] == expected["val_loss"]
            else:
                assert row["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-2)
        assert record.history[-1]["val_accuracy"] > 0.7  # it learned (10 classes)


def test_a_list_of_devices_is_taken_in_turn():
    executor = mh.LocalExecutor(device=["cpu", "cuda:1"])
    assert [executor._device_of(w) for w in range(3)] == ["cpu", "cuda:1", "cpu"]
    assert mh.LocalExecutor()._device_of(0) is None  # the CPU, as before


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu0", r"device 'gpu0' is not a PyTorch device name"),
        ([], r"device must be a device name or a list of them"),
        (3, r"device must be a device name or a list of them, e\.g\. device='cuda'"),
    ],
)
def test_a_bad_device_is_refused_before_anything_starts(device, message):
    with pytest.raises(mh.ConfigError, match=message):
        mh.LocalExecutor(device=device)


def test_a_gpu_that_is_not_there_fails_the_start_saying_so(tmp_path):
    """Checked in the worker (the driver never touches CUDA): no GPU at all, or not that one."""
    executor = mh.LocalExecutor(threads_per_worker=1, device="cuda:99")
    seen = "sees [0-9]+ GPU" if torch.cuda.is_available() else "sees no GPU"
    with pytest.raises(mh.ExecutorError, match=rf"could not start: .*'cuda:99', but .*{seen}"):
        _fit(tmp_path, "missing", "off", executor)
