"""Batches for one pass over a shard: gather, decode, transform, optionally prefetched.

Batch ``k`` of a pass is a pure function of (shard, row order, k, seed): its rows
are read (dense rows from a memory map, or encoded records decoded one by one),
stacked, passed through the streamed representation if any, then through the
MST's transform with torch's CPU generator seeded for that batch alone. So the
batches are the same whether they are made here or in DataLoader worker
processes (``num_workers``), in any number of them, on any worker, resumed or not.

Dense rows with nothing to apply take a faster road to the same batches: the rows
of many consecutive batches are gathered by one copy (``GATHER_BYTES`` at a time)
and each batch is a view of it, which spares a small model's pass a copy, a
memory-map lookup and a seed per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modelhopper._process import die_with_parent
from modelhopper.data._encoded import EncodedColumn
from modelhopper.data._streaming import stack_examples

__all__ = ["Batch", "PerExample", "batches", "per_example"]

Transform = Callable[[torch.Tensor], torch.Tensor]
# Rows copied at once by the fast road (a bound on its memory). 4 MiB rather than 16: the
# rows are still in the cache when their batches train, and a fresh worker faults in
# less memory (measured: a pass of the MLP grid's 784-256-10 MLP 1-2% faster).
GATHER_BYTES = 4 * 2**20


class PerExample:
    """A batch transform that applies ``transform`` to each example on its own.

    Most random augmentations (``torchvision.transforms.v2.RandomCrop``, flips) draw
    one set of parameters per call: on a batch they would crop every image alike.
    On encoded data (decoded images) it runs on each image before the batch is
    stacked, so it may also resize images of different sizes to one.
    """

    def __init__(self, transform: Transform) -> None:
        if not callable(transform):
            raise TypeError(f"per_example needs a callable transform, got {transform!r}")
        self.transform = transform
        self.__name__ = f"per_example({getattr(transform, '__name__', type(transform).__name__)})"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(x) for x in batch])

    def __repr__(self) -> str:
        return self.__name__


def per_example(transform: Transform) -> PerExample:
    """Wrap a transform of one example so that it runs on each example of a batch."""
    return PerExample(transform)


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    skipped: int = 0  # records left out because they could not be decoded

    def pin_memory(self) -> Batch:
        """Page-locked copies (DataLoader calls this with pin_memory=True, for GPUs)."""
        return Batch(self.x.pin_memory(), self.y.pin_memory(), self.skipped)


class _PassBatches(torch.utils.data.Dataset):
    """Batch ``k`` of a pass, made the same way in any process (DataLoader workers too)."""

    def __init__(
        self,
        x: np.ndarray | EncodedColumn,
        y: np.ndarray,
        indices: Sequence[slice | np.ndarray],
        stage: Transform | None,
        transform: Transform | None,
        seeds: Sequence[int],
    ) -> None:
        self.x, self.y, self.indices = x, y, indices
        self.stage, self.transform, self.seeds = stage, transform, seeds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Batch:
        index = self.indices[k]
        if isinstance(self.x, EncodedColumn):
            return self._decoded(index, self.seeds[k])
        xb = _tensor(self.x, index)
        if self.stage is not None:
            xb = self.stage(xb)
        return Batch(_seeded(self.transform, xb, self.seeds[k]), _tensor(self.y, index))

    def _decoded(self, index: slice | np.ndarray, seed: int) -> Batch:
        assert isinstance(self.x, EncodedColumn)
        rows = np.arange(len(self.x))[index] if isinstance(index, slice) else np.asarray(index)
        examples, kept = self.x.decode(rows)
        kept_rows = rows[kept]
        skipped = len(rows) - len(kept_rows)
        if not examples:
            return Batch(torch.empty(0), torch.empty(0), skipped)
        tensors = [torch.from_numpy(e) for e in examples]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            if isinstance(self.transform, PerExample) and self.stage is None:
                # Per image, before stacking: it may bring images of several sizes to one.
                tensors = [self.transform.transform(t) for t in tensors]
                xb = self._stack(tensors, kept_rows)
            else:
                xb = self._stack(tensors, kept_rows)
                if self.stage is not None:
                    xb = self.stage(xb)
                if self.transform is not None:
                    xb = self.transform(xb)
        return Batch(xb, torch.from_numpy(np.array(self.y[kept_rows])), skipped)

    def _stack(self, tensors: list[torch.Tensor], rows: np.ndarray) -> torch.Tensor:
        if all(t.shape == tensors[0].shape for t in tensors):
            return torch.stack(tensors)
        assert isinstance(self.x, EncodedColumn)
        origins = [self.x.origin(int(r)) for r in rows]
        stack_examples([t.numpy() for t in tensors], origins)  # raises, naming two files
        raise AssertionError("unreachable: shapes differ")


def _tensor(array: np.ndarray, index: slice | np.ndarray) -> torch.Tensor:
    """A batch as a tensor; slices of a read-only memory map are copied (torch needs writable)."""
    part = array[index]
    if not part.flags.writeable:
        part = np.array(part)
    return torch.from_numpy(part)


def _seeded(transform: Transform | None, xb: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply a batch transform with torch's CPU generator seeded for this batch alone.

    The MST's own RNG stream (dropout) is set aside and restored, so a transform's
    random draws depend only on (MST seed, epoch, shard, batch): the same on any
    worker, after any hop, resumed or not.
    """
    if transform is None:
        return xb
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform(xb)


def _die_with_parent(worker_id: int) -> None:
    # A loader process whose worker was killed would otherwise outlive it (orphaned).
    die_with_parent()


def batches(
    x: np.ndarray | EncodedColumn,
    y: np.ndarray,
    indices: Sequence[slice | np.ndarray],
    *,
    stage: Transform | None,
    transform: Transform | None,
    seeds: Sequence[int],
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """The pass's batches in order; with ``num_workers`` > 0, made ahead in DataLoader workers.

    ``seeds[k]`` is read only for a batch that has something random to seed (a
    transform, decoding), so it may be a lazy sequence."""
    if num_workers == 0 and stage is None and transform is None and isinstance(x, np.ndarray):
        yield from _gathered(x, y, indices)
        return
    made = _PassBatches(x, y, indices, stage, transform, seeds)
    if num_workers == 0:
        for k in range(len(made)):
            yield made[k]
        return
    loader = torch.utils.data.DataLoader(
        made,
        batch_size=None,  # each item already is a batch
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2,
        # Its own generator: by default the loader draws its workers' base seed from the
        # global one, which is the MST's (dropout) stream, and results would depend on it.
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=_die_with_parent,
        multiprocessing_context="fork",  # the worker's state (shard maps, transforms) as is
    )
    try:
        yield from loader
    except RuntimeError as e:
        if "exited unexpectedly" not in str(e):
            raise  # the transform's own error, re-raised by the DataLoader as it was
        # A DataLoader worker died (killed, out of memory): say what to change.
        raise RuntimeError(f"a data-loading process died: {e}; try fewer num_workers") from e


def _gathered(
    x: np.ndarray, y: np.ndarray, indices: Sequence[slice | np.ndarray]
) -> Iterator[Batch]:
    """The batches of dense rows, each a view of a copy of many batches' rows."""
    rows_per_copy = max(1, GATHER_BYTES // max(1, x.itemsize * int(np.prod(x.shape[1:]))))
    positions = np.arange(len(x))
    k = 0
    while k < len(indices):
        group = [positions[indices[k]]]
        n_rows = len(group[0])
        k += 1
        while k < len(indices) and n_rows + len(positions[indices[k]]) <= rows_per_copy:
            group.append(positions[indices[k]])
            n_rows += len(group[-1])
            k += 1
        rows = np.concatenate(group)
        xs, ys = torch.from_numpy(x[rows]), torch.from_numpy(y[rows])  # fancy index: a copy
        start = 0
        for part in group:
            yield Batch(xs[start : start + len(part)], ys[start : start + len(part)])
            start += len(part)
