"""Keras 3 models as MSTs: ``KerasEstimator``, trained by the workers through the same
protocol as a PyTorch ``Estimator`` (``estimator.Trainable``).

Keras picks its backend once per process, from ``KERAS_BACKEND`` when ``keras``
is first imported; worker processes inherit the driver's environment, so set it
(``torch`` or ``jax``) before importing keras, in the script or the shell. The
state that hops is every variable that determines the MST's future, in a fixed
order: the model's trainable and non-trainable variables (the latter include
the dropout layers' seed-generator states, so dropout draws continue exactly)
and the optimizer's (its iteration count, moments). A pass shuffles the shard
as a PyTorch MST's does, by (MST seed, epoch, shard), and steps with
``train_on_batch``: the same updates, in the same order, as ``model.fit`` over
those batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from modelhopper.errors import EstimatorError, MSTFailedError
from modelhopper.estimator import PassResult, derive_seed

__all__ = ["KerasEstimator"]


def _keras() -> Any:
    try:
        import keras
    except ImportError as e:
        raise EstimatorError(
            "KerasEstimator needs keras: pip install 'modelhopper[keras]' and set "
            "KERAS_BACKEND=torch or jax before importing it"
        ) from e
    return keras


class KerasEstimator:
    """What the user's factory returns for one Keras 3 MST.

    ``model``: a ``keras.Model``, compiled or not; an uncompiled one is compiled here
    with ``optimizer``, ``loss`` and ``metrics`` (which a compiled model already has:
    then leave them out). ``metrics`` names what the run reports besides the loss
    (``"accuracy"``: Keras's accuracy for the loss it was compiled with). Inputs
    are the shard's arrays as they are stored (cast them in the model, e.g. with a
    ``Rescaling`` layer), ``batch_size`` examples per step.
    """

    representation = None  # what a PyTorch Estimator may have; Keras models take raw x
    train_transform = eval_transform = None

    def __init__(
        self,
        model: Any,
        optimizer: Any = None,
        loss: Any = None,
        metrics: Sequence[str] = ("accuracy",),
        batch_size: int = 32,
    ) -> None:
        keras = _keras()
        if not isinstance(model, keras.Model):
            raise EstimatorError(
                f"KerasEstimator.model must be a keras.Model, got {type(model).__name__}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EstimatorError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in self.metrics if m != "accuracy"]
        if unknown:
            raise EstimatorError(
                f"unknown metric {unknown[0]!r} for a KerasEstimator; known: ['accuracy']"
            )
        if not model.compiled:
            if optimizer is None or loss is None:
                raise EstimatorError(
                    "this keras.Model is not compiled: pass optimizer= and loss= (or compile "
                    "it in make_estimator)"
                )
            model.compile(optimizer=optimizer, loss=loss, metrics=list(self.metrics))
        elif optimizer is not None or loss is not None:
            raise EstimatorError(
                "this keras.Model is already compiled with its optimizer and loss: leave "
                "out optimizer= and loss=, or pass an uncompiled model"
            )
        self.model = model
        self.batch_size = batch_size
        self.backend = keras.backend.backend()

    # -- the Trainable protocol ---------------------------------------------------------
    def train_pass(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        seed: int,
        epoch: int,
        shard: int,
        transform: Callable[..., Any] | None = None,
    ) -> PassResult:
        self._refuse(transform)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(derive_seed(seed, epoch, shard))
        order = torch.randperm(len(x), generator=generator).numpy()
        sums = dict.fromkeys(("loss", *self.metrics), 0.0)
        for start in range(0, len(x), self.batch_size):
            rows = order[start : start + self.batch_size]
            logs = self.model.train_on_batch(np.asarray(x[rows]), np.asarray(y[rows]),
                                             return_dict=True)  # fmt: skip
            if not math.isfinite(float(logs["loss"])):
                raise MSTFailedError(
                    f"loss became {float(logs['loss'])} in epoch {epoch} on shard {shard}; "
                    "lower the learning rate or check the data for extreme values"
                )
            self._add(sums, logs, len(rows))
        return self._result(len(x), sums, started)

    def evaluate_pass(
        self, x: np.ndarray, y: np.ndarray, *, transform: Callable[..., Any] | None = None
    ) -> PassResult:
        self._refuse(transform)
        started = time.perf_counter()
        sums = dict.fromkeys(("loss", *self.metrics), 0.0)
        batch = max(self.batch_size, 256)
        for start in range(0, len(x), batch):
            rows = slice(start, start + batch)
            logs = self.model.test_on_batch(np.asarray(x[rows]), np.asarray(y[rows]),
                                            return_dict=True)  # fmt: skip
            self._add(sums, logs, len(y[rows]))
        return self._result(len(x), sums, started)

    def end_epoch(self) -> None:
        """Keras schedules count optimizer steps: nothing to do at an epoch's end."""

    def get_state(self, rng_state: torch.Tensor) -> dict[str, Any]:
        numpy = _keras().ops.convert_to_numpy
        values = [torch.from_numpy(np.array(numpy(v), copy=True)) for v in self._variables()]
        return {"variables": values, "rng": rng_state}

    def set_state(self, state: Mapping[str, Any]) -> torch.Tensor:
        self._assign(state["variables"], self._variables())
        return state["rng"]

    def start_from(self, state: Mapping[str, Any]) -> None:
        """A warm start: the weights of ``state`` (a parent's), not its optimizer."""
        model = self.model
        n = len(model.trainable_variables) + len(model.non_trainable_variables)
        self._assign(state["variables"][:n], self._model_variables())

    def place(self, device: str | None) -> None:
        if device is not None and device != "cpu":
            raise EstimatorError(
                f"KerasEstimator trains where its backend puts it; a worker device "
                f"({device!r}) is for PyTorch estimators"
            )

    # -- helpers ---------------------------------------------------------------------
    def _model_variables(self) -> list[Any]:
        return [*self.model.trainable_variables, *self.model.non_trainable_variables]

    def _variables(self) -> list[Any]:
        optimizer = self.model.optimizer
        if not optimizer.built:  # its slots exist from the first step: make them now
            optimizer.build(self.model.trainable_variables)
        return [*self._model_variables(), *optimizer.variables]

    @staticmethod
    def _assign(values: Sequence[Any], variables: Sequence[Any]) -> None:
        if len(values) != len(variables):
            raise MSTFailedError(
                f"the state holds {len(values)} Keras variables, the model {len(variables)}: "
                "make_estimator built a different model for the same params"
            )
        for variable, value in zip(variables, values, strict=True):
            variable.assign(np.asarray(value))

    @staticmethod
    def _add(sums: dict[str, float], logs: Mapping[str, Any], n: int) -> None:
        # train_on_batch / test_on_batch report the batch's means: sums are mean x n.
        for name in sums:
            sums[name] += float(logs[name]) * n

    def _result(self, n: int, sums: dict[str, float], started: float) -> PassResult:
        metrics = {name: sums[name] for name in self.metrics}
        return PassResult(n, sums["loss"], metrics, time.perf_counter() - started)

    @staticmethod
    def _refuse(transform: Callable[..., Any] | None) -> None:
        if transform is not None:
            raise EstimatorError("KerasEstimator takes no Representation or transform")
