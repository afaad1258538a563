"""An image that cannot be decoded, met on a worker while training: named, or skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import modelhopper as mh


def make_estimator(p):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        train_transform=lambda x: x.float() / 255,
        eval_transform=lambda x: x.float() / 255,
    )


@pytest.fixture
def folder(tmp_path) -> Path:
    root = mh.datasets.fashion_mnist_folder(tmp_path / "images", limit=120)
    # Not the first record (that one is decoded up front): found only on a worker.
    (root / "trouser" / "99999.png").write_bytes(b"\x89PNG truncated")
    return root


def _search() -> mh.GridSearch:
    return mh.GridSearch(make_estimator, {"lr": mh.grid([0.1, 0.01])}, epochs=2, seed=0)


def test_a_corrupt_image_fails_the_msts_that_meet_it_naming_the_file(folder, tmp_path):
    data = mh.Dataset.from_image_folder(folder, fractions=(0.75, 0.25, 0.0))
    # each MST's failure is announced as it happens, then the run ends with all of them
    with (
        pytest.warns(UserWarning, match=r"MST \d .* failed: BadRecordError: cannot decode") as seen,
        pytest.raises(mh.AllMSTsFailedError, match=r"cannot decode .*trouser/99999\.png"),
    ):
        _search().fit(data, n_workers=2, run_dir=tmp_path / "run")
    assert sorted(str(w.message).split()[1] for w in seen) == ["0", "1"]


def test_skipped_records_are_left_out_and_counted(folder, tmp_path):
    data = mh.Dataset.from_image_folder(folder, fractions=(0.75, 0.25, 0.0), on_bad_record="skip")
    result = _search().fit(data, n_workers=2, run_dir=tmp_path / "run")
    history = result.history()
    assert (
        (history.get("train_skipped_records", 0) + history.get("val_skipped_records", 0))
        .eq(1)
        .all()
    )  # every epoch of every MST met the one bad file once, in training or validation
    assert all(m.status is mh.MSTStatus.COMPLETED for m in result.msts)
