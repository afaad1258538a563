"""Estimator: what one MST trains, and the train / evaluate passes over one shard.

These functions are the whole of the numerical work. Workers call them under
MOP; the equivalence test calls the same passes in one process and checks the
parameters agree bit for bit, so anything that would make a hop visible
(RNG state, optimizer state, lr-scheduler state) must live in ``MSTState``.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from modelhopper import _state_format
from modelhopper._loader import batches, per_example
from modelhopper.data._encoded import EncodedColumn
from modelhopper.errors import EstimatorError, MSTFailedError
from modelhopper.representations._representation import Representation

__all__ = [
    "Estimator",
    "Trainable",
    "EPOCH_TRAIN_SECONDS",
    "METRICS",
    "MODEL_METRICS",
    "PassResult",
    "build_estimator",
    "derive_seed",
    "denormals_flushed",
    "flush_denormals",
    "per_example",
    "SKIPPED",
    "train_pass",
    "evaluate_pass",
    "get_state",
    "set_state",
    "state_to_bytes",
    "state_from_bytes",
    "metric_names",
]


def _accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.argmax(dim=1) == target).sum()


def _squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((output.reshape(target.shape) - target) ** 2).sum()


def _absolute_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.reshape(target.shape) - target).abs().sum()


# Every epoch's metrics also hold its training seconds (summed over its shards' steps): a
# cost a procedure may trade against accuracy. Measured, so it varies from run to run.
EPOCH_TRAIN_SECONDS = "train_seconds"

# Each metric returns a *sum* over a batch (a 0-d tensor on the batch's device), so shards
# aggregate exactly by example count.
METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "accuracy": _accuracy,
    "mse": _squared_error,
    "mae": _absolute_error,
}


def _n_params(model: nn.Module) -> float:
    return float(sum(p.numel() for p in model.parameters()))


# Metrics of the model itself, not of a batch (an objective beside accuracy: model size).
# A pass reports value * examples, so the shards' example-weighted mean is the value.
MODEL_METRICS: dict[str, Callable[[nn.Module], float]] = {"n_params": _n_params}


Batchwise = Callable[[torch.Tensor], torch.Tensor] | None  # a transform of a batch, or none
Labels = np.ndarray

# Estimator(loss="model"): the model computes the task's loss itself: model(x, labels=y)
# returns an object with .loss and .logits (as Hugging Face models do); model(x), the
# logits (what the pre-flight check and metrics see).
MODEL_LOSS = "model"


@dataclass
class Estimator:
    """What the user's factory returns for one MST (PyTorch)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | str
    metrics: Sequence[str] = field(default_factory=lambda: ("accuracy",))
    batch_size: int = 32
    lr_scheduler: Any = None  # stepped once at the end of each epoch
    # Applied to raw x on the worker before the model sees it; materialised once per shard.
    representation: Representation | None = None
    # Applied to each training / evaluation batch on the worker (after any representation),
    # e.g. random augmentation; train_transform's torch draws are seeded per batch.
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    # DataLoader worker processes that read, decode and transform batches ahead of the
    # model (0: in the training process). Results do not depend on it.
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.representation is not None and not isinstance(self.representation, Representation):
            raise EstimatorError(
                "Estimator.representation must be a modelhopper.Representation or None, "
                f"got {type(self.representation).__name__}"
            )
        if not isinstance(self.model, nn.Module):
            raise EstimatorError(
                f"Estimator.model must be a torch.nn.Module, got {type(self.model).__name__}"
            )
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise EstimatorError(
                "Estimator.optimizer must be a torch.optim.Optimizer over the model's "
                f"parameters, got {type(self.optimizer).__name__}"
            )
        if not callable(self.loss) and self.loss != MODEL_LOSS:
            raise EstimatorError(
                f"Estimator.loss must be callable, or {MODEL_LOSS!r} for a model that computes "
                f"its own loss (model(x, labels=y).loss), got {self.loss!r}"
            )
        for name in ("train_transform", "eval_transform"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise EstimatorError(
                    f"Estimator.{name} must be a callable taking and returning a batch tensor "
                    f"(e.g. a torchvision.transforms.v2 transform) or None, got {value!r}"
                )
        if (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 0
        ):
            raise EstimatorError(
                f"num_workers must be an int >= 0 (data-loading processes), got "
                f"{self.num_workers!r}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise EstimatorError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise EstimatorError(f"batch_size must be >= 1, got {self.batch_size}")
        if isinstance(self.metrics, str):
            self.metrics = (self.metrics,)
        unknown = [m for m in self.metrics if m not in METRICS and m not in MODEL_METRICS]
        if unknown:
            raise EstimatorError(
                f"unknown metric {unknown[0]!r} in Estimator.metrics; "
                f"known metrics: {sorted([*METRICS, *MODEL_METRICS])}"
            )
        self.metrics = tuple(self.metrics)

    # -- the Trainable protocol: what a worker trains this MST through ---------------
    def train_pass(
        self,
        x: Any,
        y: np.ndarray,
        *,
        seed: int,
        epoch: int,
        shard: int,
        transform: Batchwise = None,
    ) -> PassResult:
        return train_pass(self, x, y, seed=seed, epoch=epoch, shard=shard, transform=transform)

    def evaluate_pass(
        self,
        x: Any,
        y: np.ndarray,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> PassResult:
        return evaluate_pass(self, x, y, transform=transform)

    def end_epoch(self) -> None:
        end_epoch(self)

    def get_state(self, rng_state: torch.Tensor) -> dict[str, Any]:
        return get_state(self, rng_state)

    def set_state(self, state: Mapping[str, Any]) -> torch.Tensor:
        return set_state(self, state)

    def start_from(self, state: Mapping[str, Any]) -> None:
        """A warm start: the weights of ``state`` (a parent's), not its optimizer."""
        self.model.load_state_dict(state["model"])

    def place(self, device: str | None) -> None:
        """Train on ``device`` (e.g. "cuda"); in place, so the optimizer keeps its params."""
        if device is not None:
            self.model.to(device)


@runtime_checkable
class Trainable(Protocol):
    """What a worker trains one MST through: ``Estimator`` (PyTorch) and
    ``KerasEstimator`` implement it; ``modelhopper.testing.EstimatorConformance``
    checks an implementation. A pass returns sums (``PassResult``), so shards
    aggregate exactly; the state is a nest of tensors and plain values holding
    everything that decides the MST's future, the worker's torch RNG included."""

    model: Any
    batch_size: int
    metrics: Sequence[str]
    representation: Representation | None

    def train_pass(
        self,
        x: Any,
        y: np.ndarray,
        *,
        seed: int,
        epoch: int,
        shard: int,
        transform: Batchwise = None,
    ) -> PassResult: ...
    def evaluate_pass(
        self, x: Any, y: np.ndarray, *, transform: Batchwise = None
    ) -> PassResult: ...
    def end_epoch(self) -> None: ...
    def get_state(self, rng_state: torch.Tensor) -> dict[str, Any]: ...
    def set_state(self, state: Mapping[str, Any]) -> torch.Tensor: ...
    def start_from(self, state: Mapping[str, Any]) -> None: ...
    def place(self, device: str | None) -> None: ...


def metric_names(metrics: Sequence[str]) -> list[str]:
    """Names a run reports for an estimator: loss and metrics, on train and validation, and
    ``train_seconds`` (the epoch's measured training time: a cost objective)."""
    return [f"{split}_{m}" for split in ("train", "val") for m in ("loss", *metrics)] + [
        EPOCH_TRAIN_SECONDS
    ]


def build_estimator(
    factory: Callable[[dict[str, Any]], Trainable], params: Mapping, seed: int
) -> Trainable:
    """Call the factory under the MST's seed, so initial weights depend on it alone."""
    with _keras_seeded(seed):
        torch.manual_seed(seed)
        estimator = factory(dict(params))
    if not isinstance(estimator, Trainable):
        raise EstimatorError(
            "make_estimator must return modelhopper.Estimator (or KerasEstimator), got "
            f"{type(estimator).__name__}"
        )
    return estimator


@contextmanager
def _keras_seeded(seed: int) -> Iterator[None]:
    """Keras draws initial weights and dropout seeds from Python's and NumPy's global
    random state: seed them by the MST's seed too, and put them back afterwards."""
    keras = sys.modules.get("keras")
    if keras is None:
        yield
        return
    python, numpy = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (e.g. MST seed, epoch, shard)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class BatchSeeds(Sequence[int]):
    """Batch ``k``'s seed, ``derive_seed(*prefix, k, salt)``, derived only when read (a
    pass without random transforms never reads one)."""

    def __init__(self, n: int, prefix: tuple[int, ...], salt: int) -> None:
        self.n, self.prefix, self.salt = n, prefix, salt

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> int:  # type: ignore[override]  # no slices needed
        if not 0 <= k < self.n:
            raise IndexError(k)
        return derive_seed(*self.prefix, k, self.salt)


@dataclass(frozen=True)
class PassResult:
    """Sums over one pass; divide by ``n`` to get means."""

    n: int
    loss_sum: float
    metric_sums: dict[str, float]
    seconds: float


def flush_denormals() -> None:
    """Compute with denormal floats flushed to zero, as TensorFlow and XLA do on CPUs.

    Weights that weight decay drives towards zero, and their Adam moments, end up
    denormal: each operation on one then costs ~100x, and an epoch can take
    twice as long as the one before. Flushing changes results only where values
    are below ~1e-38. A process-wide setting, for processes modelhopper owns (the
    workers call it before their thread pool exists: its threads inherit it); in
    the user's process use ``denormals_flushed()``, which undoes it.
    """
    torch.set_flush_denormal(True)


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormals while in the block (e.g. to compute what a worker computes)."""
    flush_denormals()
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # IEEE behaviour, every process's default


def _device_of(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters are (batches go there); the CPU for a parameterless model."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _batch_indices(n: int, batch_size: int, order: np.ndarray | None) -> list[slice | np.ndarray]:
    starts = range(0, n, batch_size)
    if order is None:
        return [slice(start, min(start + batch_size, n)) for start in starts]
    return [order[start : start + batch_size] for start in starts]


_AUGMENT, _EVAL_AUGMENT = 1, 2  # salts: transform seeds never equal the shuffle's
SKIPPED = "skipped_records"  # a count in PassResult.metric_sums, not a mean


def train_pass(
    estimator: Estimator,
    x: np.ndarray | EncodedColumn,
    y: np.ndarray,
    *,
    seed: int,
    epoch: int,
    shard: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PassResult:
    """One pass of SGD over a shard, shuffled by (MST seed, epoch, shard).

    ``transform`` (a streamed representation) is applied to each batch of ``x``, then
    the estimator's ``train_transform``, its torch draws seeded by (MST seed, epoch,
    shard, batch number). Encoded ``x`` (image bytes) is decoded batch by batch.
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, shard))
    order = torch.randperm(len(x), generator=generator).numpy()
    model, optimizer = estimator.model, estimator.optimizer
    model.train()
    n, skipped, steps = 0, 0, 0
    device = _device_of(model)
    sums = _Sums(estimator.metrics, device)
    indices = _batch_indices(len(x), estimator.batch_size, order)
    seeds = BatchSeeds(len(indices), (seed, epoch, shard), _AUGMENT)
    for batch in batches(
        x, y, indices, stage=transform, transform=estimator.train_transform, seeds=seeds,
        num_workers=estimator.num_workers, pin_memory=device.type == "cuda",
    ):  # fmt: skip
        skipped += batch.skipped
        if not len(batch.y):
            continue
        xb, yb = batch.x.to(device), batch.y.to(device)
        optimizer.zero_grad(set_to_none=True)
        output, loss = forward(estimator, xb, yb)
        loss.backward()
        optimizer.step()
        n += len(yb)
        steps += 1
        sums.add(output.detach(), loss.detach(), yb)
        if steps % _CHECK_EVERY == 0:
            _check_finite(sums.loss(), n, epoch, shard)
    loss_sum = sums.loss()
    _check_finite(loss_sum, n, epoch, shard)
    return _result(estimator, n, loss_sum, sums.metrics(), skipped, started)


# Steps between checks of the loss for NaN/inf: reading the loss syncs a GPU with the host,
# so not every step; a diverged MST wastes at most this many steps (NaN/inf stays in the sum).
_CHECK_EVERY = 32


def _check_finite(loss_sum: float, n: int, epoch: int, shard: int) -> None:
    if not math.isfinite(loss_sum):
        raise MSTFailedError(
            f"loss became {loss_sum / max(n, 1)} in epoch {epoch} on shard {shard}; "
            "lower the learning rate or check the data for extreme values"
        )


# Metrics whose per-batch values are counts (exact integers): their sum over several
# batches in one op equals the sum of the per-batch sums, so they may be summed in groups.
_COUNTS = frozenset({"accuracy"})
# On the CPU, the batches whose sums are made together (unless their outputs exceed the
# bytes): a tensor op between a step's backward and the next forward costs tens of
# microseconds (measured, per-batch sums: ~12% of a pass of the README example's digits
# MLP, ~4% of a 784-256-10 MLP's at batch 64; summed in groups, about a third of that).
_SUM_EVERY = _CHECK_EVERY
_PENDING_BYTES = 1 << 20


class _Sums:
    """A pass's loss and batch-metric sums. On an accelerator they stay on the device (in
    float64) and are read when asked: reading them at every batch would make the host wait
    for the device at every step. On the CPU they are Python floats, made every
    ``_SUM_EVERY`` batches from the outputs and losses kept until then (one stack of the
    losses, one op per count metric). Both make the same float64 additions as adding
    each batch's loss and metrics in turn."""

    def __init__(
        self, metrics: Sequence[str], device: torch.device, *, on_device: bool | None = None
    ) -> None:
        self._names = list(metrics)
        self._on_host = device.type == "cpu" if on_device is None else not on_device
        zero = 0.0 if self._on_host else torch.zeros((), dtype=torch.float64, device=device)
        self._loss: float | torch.Tensor = zero
        self._batch: dict[str, float | torch.Tensor] = {
            name: zero for name in metrics if name in METRICS
        }
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending_bytes = 0

    def add(self, output: torch.Tensor, loss: torch.Tensor, y: torch.Tensor) -> None:
        if self._on_host:
            self._pending.append((output, loss, y))
            self._pending_bytes += output.nbytes
            if len(self._pending) >= _SUM_EVERY or self._pending_bytes > _PENDING_BYTES:
                self._add_pending()
            return
        with torch.no_grad():
            self._loss = self._loss + loss.double() * len(y)
            for name in self._batch:
                self._batch[name] = self._batch[name] + METRICS[name](output, y)

    @torch.no_grad()
    def _add_pending(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        losses = [loss for _, loss, _ in pending]
        # One op for the usual scalar losses of one dtype; one read per loss otherwise.
        stack = all(loss.dim() == 0 and loss.dtype == losses[0].dtype for loss in losses)
        values = torch.stack(losses).tolist() if stack else [float(loss) for loss in losses]
        for value, (_, _, y) in zip(values, pending, strict=True):
            self._loss += value * len(y)
        outputs = [output for output, _, _ in pending]
        stackable = all(o.shape[1:] == outputs[0].shape[1:] for o in outputs)
        for name in self._batch:
            if name in _COUNTS and stackable:
                labels = torch.cat([y for _, _, y in pending])
                self._batch[name] += float(METRICS[name](torch.cat(outputs), labels))
            else:
                for output, _, y in pending:
                    self._batch[name] += float(METRICS[name](output, y))

    def loss(self) -> float:
        self._add_pending()
        return float(self._loss)

    def metrics(self) -> dict[str, float]:
        self._add_pending()
        return {name: float(self._batch.get(name, 0.0)) for name in self._names}


def forward(estimator: Estimator, x: torch.Tensor, y: torch.Tensor):
    """The model's output on a batch and the loss against ``y``: (output, loss)."""
    if isinstance(estimator.loss, str):  # MODEL_LOSS: the model's own
        result = estimator.model(x, labels=y)
        return result.logits, result.loss
    output = estimator.model(x)
    return output, estimator.loss(output, y)


def _result(
    estimator: Estimator,
    n: int,
    loss_sum: float,
    sums: dict[str, float],
    skipped: int,
    started: float,
) -> PassResult:
    for name in estimator.metrics:
        if name in MODEL_METRICS:
            sums[name] = MODEL_METRICS[name](estimator.model) * n
    if skipped:
        sums[SKIPPED] = float(skipped)
    if n == 0:
        raise MSTFailedError(
            f"every one of the shard's {skipped} records was skipped as unreadable; check "
            "the data (on_bad_record='skip' leaves such records out)"
        )
    return PassResult(n, loss_sum, sums, time.perf_counter() - started)


@torch.no_grad()
def evaluate_pass(
    estimator: Estimator,
    x: np.ndarray | EncodedColumn,
    y: np.ndarray,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PassResult:
    """Loss and metric sums over a validation shard (no RNG use, no state change)."""
    started = time.perf_counter()
    estimator.model.eval()
    n, skipped = 0, 0
    batch_size = max(estimator.batch_size, 256)  # no gradients: bigger batches are cheaper
    device = _device_of(estimator.model)
    sums = _Sums(estimator.metrics, device)
    indices = _batch_indices(len(x), batch_size, None)
    seeds = BatchSeeds(len(indices), (), _EVAL_AUGMENT)
    for batch in batches(
        x, y, indices, stage=transform, transform=estimator.eval_transform, seeds=seeds,
        num_workers=estimator.num_workers, pin_memory=device.type == "cuda",
    ):  # fmt: skip
        skipped += batch.skipped
        if not len(batch.y):
            continue
        xb, yb = batch.x.to(device), batch.y.to(device)
        output, loss = forward(estimator, xb, yb)
        n += len(yb)
        sums.add(output, loss, yb)
    return _result(estimator, n, sums.loss(), sums.metrics(), skipped, started)


def end_epoch(estimator: Estimator) -> None:
    """Epoch-level bookkeeping after the last training step of an epoch."""
    if estimator.lr_scheduler is not None:
        estimator.lr_scheduler.step()


# -- state that hops ---------------------------------------------------------
def get_state(estimator: Estimator, rng_state: torch.Tensor) -> dict[str, Any]:
    """Everything that determines the MST's future: weights, optimizer, schedule, RNG."""
    state = {
        "model": estimator.model.state_dict(),
        "optimizer": estimator.optimizer.state_dict(),
        "rng": rng_state,
    }
    if estimator.lr_scheduler is not None:
        state["lr_scheduler"] = estimator.lr_scheduler.state_dict()
    return state


def set_state(estimator: Estimator, state: Mapping[str, Any]) -> torch.Tensor:
    """Load a state into a freshly built (or cached) estimator; returns its RNG state."""
    estimator.model.load_state_dict(state["model"])
    estimator.optimizer.load_state_dict(state["optimizer"])
    if estimator.lr_scheduler is not None and "lr_scheduler" in state:
        estimator.lr_scheduler.load_state_dict(state["lr_scheduler"])
    return state["rng"]


def state_to_bytes(state: Mapping[str, Any]) -> bytes:
    return _state_format.encode(state)


def state_from_bytes(data: bytes) -> dict[str, Any]:
    # On the CPU whatever device wrote it: loading copies it to the model's device.
    return _state_format.decode(data)
