"""One epoch of an MST trained data-parallel by a group of workers (hybrid mode).

Every member holds some of the epoch's shards. Each shard's rows are shuffled as a
one-worker pass shuffles them (seeded by MST seed, epoch and shard) and cut into
``n_steps = ceil(rows of all shards / batch_size)`` consecutive parts whose sizes differ
by at most one: global batch ``k`` is part ``k`` of every shard, so it holds about
``batch_size`` rows, drawn from every shard in proportion to its size. Which worker
holds which shard changes nothing but where the gradient is computed: a member sums
``n_rows * gradient of the mean loss`` over its parts, the group all-reduces those sums
with the row count, and every member divides by the count and takes the same optimizer
step. The result is SGD over the global batches, to float tolerance of the sum order
(``tests/test_hybrid.py`` checks it against a plain loop).

Batch statistics (batch normalisation) are the member's own, as in PyTorch's DDP.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modelhopper.errors import MSTFailedError
from modelhopper.estimator import (
    _AUGMENT,
    _CHECK_EVERY,
    BatchSeeds,
    Batchwise,
    Estimator,
    PassResult,
    _device_of,
    _result,
    _Sums,
    batches,
    derive_seed,
    forward,
)

__all__ = ["ShardPart", "group_train_pass", "n_global_batches", "shard_parts"]

AllReduce = Callable[[torch.Tensor], None]  # sums a tensor over the group, in place


@dataclass(frozen=True)
class ShardPart:
    """A shard a member trains on in a group epoch: its index and training data."""

    shard: int
    x: Any
    y: np.ndarray
    transform: Batchwise = None


def n_global_batches(n_rows: int, batch_size: int) -> int:
    """How many global batches a group epoch over ``n_rows`` rows takes."""
    return max(1, math.ceil(n_rows / batch_size))


def shard_parts(
    n_rows: int, n_steps: int, *, seed: int, epoch: int, shard: int
) -> list[np.ndarray]:
    """The rows of a shard of ``n_rows`` rows that each of the ``n_steps`` global batches
    takes: its shuffled order (as a one-worker pass shuffles it), cut in ``n_steps``."""
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, shard))
    return np.array_split(torch.randperm(n_rows, generator=generator).numpy(), n_steps)


def group_train_pass(
    estimator: Estimator,
    shards: Sequence[ShardPart],
    *,
    seed: int,
    epoch: int,
    n_rows: int,
    all_reduce: AllReduce,
) -> dict[int, PassResult]:
    """This member's share of one data-parallel epoch over ``n_rows`` rows in all; each of
    its shards' loss and metric sums (its ``seconds``: the pass's, shared out)."""
    started = time.perf_counter()
    model, optimizer = estimator.model, estimator.optimizer
    model.train()
    device = _device_of(model)
    n_steps = n_global_batches(n_rows, estimator.batch_size)
    streams = [
        _stream(estimator, part, shard_parts(len(part.y), n_steps, seed=seed, epoch=epoch,
                                             shard=part.shard), seed, epoch, device)
        for part in shards
    ]  # fmt: skip
    sums = {part.shard: _Sums(estimator.metrics, device) for part in shards}
    counts = dict.fromkeys(sums, 0)
    skipped = dict.fromkeys(sums, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    dtype = params[0].dtype if params else torch.float32
    buffer = torch.zeros(sum(p.numel() for p in params) + 1, dtype=dtype, device=device)
    for step in range(n_steps):
        optimizer.zero_grad(set_to_none=True)
        n_local = 0
        for part, stream in zip(shards, streams, strict=True):
            batch = next(stream)
            skipped[part.shard] += batch.skipped
            if not len(batch.y):
                continue
            xb, yb = batch.x.to(device), batch.y.to(device)
            output, loss = forward(estimator, xb, yb)
            (loss * len(yb)).backward()  # a sum over rows: members' sums add up
            sums[part.shard].add(output.detach(), loss.detach(), yb)
            counts[part.shard] += len(yb)
            n_local += len(yb)
        _reduce_gradients(params, buffer, n_local, all_reduce)
        if (step + 1) % _CHECK_EVERY == 0 or step == n_steps - 1:
            _check_finite(buffer, epoch)  # every member sees the same sums: all stop together
        optimizer.step()
    seconds = (time.perf_counter() - started) / len(shards)
    return {
        shard: dataclasses.replace(
            _result(estimator, counts[shard], sums[shard].loss(), sums[shard].metrics(),
                    skipped[shard], started),
            seconds=seconds,
        )
        for shard in sums
    }  # fmt: skip


def _stream(
    estimator: Estimator,
    part: ShardPart,
    indices: list[np.ndarray],
    seed: int,
    epoch: int,
    device: torch.device,
):
    seeds = BatchSeeds(len(indices), (seed, epoch, part.shard), _AUGMENT)
    return iter(
        batches(
            part.x, part.y, indices, stage=part.transform, transform=estimator.train_transform,
            seeds=seeds, num_workers=estimator.num_workers, pin_memory=device.type == "cuda",
        )
    )  # fmt: skip


def _reduce_gradients(
    params: Sequence[torch.Tensor], buffer: torch.Tensor, n_local: int, all_reduce: AllReduce
) -> None:
    """Sum every member's gradient sums and row counts; leave the mean in each ``.grad``."""
    offset = 0
    for p in params:
        size = p.numel()
        if p.grad is None:
            buffer[offset : offset + size].zero_()
        else:
            buffer[offset : offset + size].copy_(p.grad.reshape(-1))
        offset += size
    buffer[-1] = n_local
    all_reduce(buffer)
    total = float(buffer[-1])
    if total:
        buffer[:-1].div_(total)
    offset = 0
    for p in params:
        size = p.numel()
        mean = buffer[offset : offset + size].view_as(p)
        if p.grad is None:
            p.grad = mean.clone()
        else:
            p.grad.copy_(mean)
        offset += size


def _check_finite(buffer: torch.Tensor, epoch: int) -> None:
    if not bool(torch.isfinite(buffer).all()):
        raise MSTFailedError(
            f"the gradient became NaN or infinite in epoch {epoch} (data-parallel group); "
            "lower the learning rate or check the data for extreme values"
        )
