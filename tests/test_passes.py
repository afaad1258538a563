"""One training pass on a worker: its sums, and how soon it notices a diverged loss."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper import estimator as est
from modelhopper.errors import MSTFailedError


@pytest.fixture(scope="module")
def digits():
    return mh.datasets.digits(seed=0)


def _estimator(metrics: list[str]) -> mh.Estimator:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return mh.Estimator(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
                        loss=nn.CrossEntropyLoss(), metrics=metrics, batch_size=16)  # fmt: skip


def _float_sums(estimator: mh.Estimator, x, y, seed: int) -> tuple[float, float]:
    """The same SGD steps, with the loss and correct predictions read into Python floats
    at every step (what the sums are defined as)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).numpy()
    loss_sum = correct = 0.0
    for start in range(0, len(x), estimator.batch_size):
        rows = order[start : start + estimator.batch_size]
        xb, yb = torch.from_numpy(x[rows]), torch.from_numpy(y[rows])
        estimator.optimizer.zero_grad(set_to_none=True)
        output = estimator.model(xb)
        loss = estimator.loss(output, yb)
        loss.backward()
        estimator.optimizer.step()
        loss_sum += float(loss.detach()) * len(rows)
        correct += float((output.argmax(1) == yb).sum())
    return loss_sum, correct


def test_a_pass_sums_exactly_what_per_step_floats_would(digits):
    x, y = digits.train.x, digits.train.y
    ours = _estimator(["accuracy", "n_params"])
    reference = copy.deepcopy(ours)
    got = est.train_pass(ours, x, y, seed=7, epoch=2, shard=1)
    loss_sum, correct = _float_sums(reference, x, y, est.derive_seed(7, 2, 1))
    assert got.n == len(x)
    assert got.loss_sum == loss_sum  # exactly: float64 additions, as Python's floats make
    assert got.metric_sums["accuracy"] == correct
    assert got.metric_sums["n_params"] == (64 * 32 + 32 + 32 * 10 + 10) * len(x)
    for a, b in zip(ours.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(a, b)


class _DivergesAt(nn.Module):
    """A linear model whose output becomes NaN from its ``at``-th training call on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.linear, self.at, self.calls = nn.Linear(64, 10), at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(x)
        return out * float("nan") if self.calls >= self.at else out


def test_a_diverged_loss_fails_the_pass_within_a_few_steps(digits):
    x, y = digits.train.x, digits.train.y  # ~90 batches of 16
    model = _DivergesAt(at=3)
    estimator = mh.Estimator(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                             loss=nn.CrossEntropyLoss(), batch_size=16)  # fmt: skip
    with pytest.raises(MSTFailedError, match=r"loss became nan in epoch 4 on shard 1; lower the"):
        est.train_pass(estimator, x, y, seed=0, epoch=4, shard=1)
    assert model.calls <= est._CHECK_EVERY < len(x) // 16  # stopped early, not at the end


def test_a_loss_diverging_on_the_last_steps_is_caught_at_the_end(digits):
    x, y = digits.train.x, digits.train.y
    n_batches = -(-len(x) // 16)
    model = _DivergesAt(at=n_batches)  # only the very last batch
    estimator = mh.Estimator(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                             loss=nn.CrossEntropyLoss(), batch_size=16)  # fmt: skip
    with pytest.raises(MSTFailedError, match="loss became nan"):
        est.train_pass(estimator, x, y, seed=0, epoch=0, shard=0)
    assert model.calls == n_batches


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sums_kept_on_the_device_equal_sums_read_at_every_batch(task):
    """The accelerator path (sums left on the device, read once) makes the same additions
    as the CPU's (Python floats); run here on the CPU, forced."""
    generator = torch.Generator().manual_seed(0)
    metrics = ["accuracy"] if task == "classification" else ["mse", "mae"]
    on_host = est._Sums(metrics, torch.device("cpu"))
    on_device = est._Sums(metrics, torch.device("cpu"), on_device=True)
    for _ in range(50):
        if task == "classification":
            output = torch.randn(16, 10, generator=generator)
            y = torch.randint(0, 10, (16,), generator=generator)
        else:
            output = torch.randn(16, 1, generator=generator) * 1e3
            y = torch.randn(16, generator=generator)
        loss = output.abs().mean() / 7
        on_host.add(output, loss, y)
        on_device.add(output, loss, y)
    assert isinstance(on_device._loss, torch.Tensor) and isinstance(on_host._loss, float)
    assert on_device.loss() == on_host.loss()
    assert on_device.metrics() == on_host.metrics()


def test_outputs_kept_for_the_sums_stay_within_their_bound():
    """On the CPU a pass's outputs wait to be summed in groups, but never more than
    ``_PENDING_BYTES`` of them: a large output (a language model's logits) is summed at once."""
    sums = est._Sums(["accuracy"], torch.device("cpu"))
    small, y = torch.zeros(16, 10), torch.zeros(16, dtype=torch.long)
    for _ in range(3):
        sums.add(small, torch.tensor(1.0), y)
    assert len(sums._pending) == 3
    large = torch.zeros(16, est._PENDING_BYTES // (16 * 4) + 1)
    sums.add(large, torch.tensor(2.0), y)
    assert sums._pending == [] and sums.loss() == (3 * 1.0 + 2.0) * 16
    assert sums.metrics() == {"accuracy": 4 * 16.0}
