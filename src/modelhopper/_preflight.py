"""The pre-flight check: the run's first MSTs train one batch before any worker starts.

What every MST of a run shares (the factory, the data, the loss against the
labels, the model against the examples' shape) would otherwise fail on the
workers, once per MST, only after they started and the data was sharded. So
``run_search`` asks a copy of the procedure for its first MSTs and, for the
first, builds the estimator and runs one forward pass, loss and backward pass on
two training examples as a worker would (representation, ``train_transform``),
on a copy of the model. Nothing is kept: torch's global RNG and the
flush-denormal mode are restored and the copy is dropped, so the run's results
do not change.

If the first MST fails, the next ones (up to ``N_PROBED`` in all) are tried: when
one of them trains, the failure depends on the params, and the failing MSTs fail
alone on the workers as usual; the run refuses to start (``EstimatorError``) only
when every probed MST fails.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from modelhopper._vocabulary import MST, EpochResult, MSTStatus, Procedure
from modelhopper.errors import ConfigError, EstimatorError
from modelhopper.estimator import Estimator, Trainable, metric_names

__all__ = ["N_PROBED", "first_msts", "preflight"]

N_PROBED = 3  # MSTs tried before a run is refused: all must fail


# -- the first MSTs, as the procedure will propose them ---------------------------------
class _Enough(Exception):
    """Raised out of ``on_start`` once enough MSTs were proposed."""


class _Proposals:
    """A Trainer that records the MSTs a procedure adds in ``on_start``, and trains none."""

    def __init__(self, procedure: Procedure, n_workers: int, limit: int) -> None:
        self._procedure, self._n_workers, self._limit = procedure, n_workers, limit
        self.added: list[MST] = []
        self._epochs: dict[int, int] = {}

    @property
    def n_workers(self) -> int:
        return self._n_workers

    def add(
        self,
        params: Mapping[str, Any],
        *,
        epochs: int,
        parent: int | None = None,
        warm_start: bool = False,
    ) -> MST:
        checked = self._procedure.space.validate_point(params)  # as the driver does
        mst = self._procedure.make_mst(len(self.added), checked, parent)
        self.added.append(mst)
        self._epochs[mst.id] = epochs
        if len(self.added) >= self._limit:
            raise _Enough
        return mst

    def extend(self, mst_id: int, epochs: int) -> None:
        self._epochs[mst_id] = max(self._epochs[mst_id], epochs)

    def stop(self, mst_id: int) -> None:
        return None

    def msts(self) -> list[MST]:
        return list(self.added)

    def status(self, mst_id: int) -> MSTStatus:
        return MSTStatus.PENDING

    def active(self) -> list[int]:
        return [m.id for m in self.added]

    def budget(self, mst_id: int) -> int:
        return self._epochs[mst_id]

    def results(self, mst_id: int | None = None) -> list[EpochResult]:
        return []


def first_msts(procedure: Procedure, copy_of_it: Procedure | None, n_workers: int) -> list[MST]:
    """The first MSTs the run will train (at most ``N_PROBED``).

    ``copy_of_it`` (a fresh copy of ``procedure``, e.g. unpickled) is started on a
    recording trainer, so the procedure itself keeps its state. Without a copy, or
    when the copy proposes nothing, a point sampled with the procedure's seed stands in.
    """
    if copy_of_it is not None:
        recorder = _Proposals(copy_of_it, n_workers, N_PROBED)
        # _Enough stops it; a procedure that fails here fails again in the run, saying why
        with contextlib.suppress(Exception):
            copy_of_it.on_start(recorder)
        if recorder.added:
            return recorder.added
    point = procedure.space.sample(np.random.default_rng(procedure.seed))
    return [procedure.make_mst(0, point)]


# -- one batch through one MST -----------------------------------------------------------
class _CannotTrain(Exception):
    """Why an MST cannot train one batch (a sentence that ends with how to fix it)."""


def preflight(
    procedure: Procedure,
    msts: list[MST],
    head: tuple[np.ndarray, np.ndarray],
    check_labels: Callable[[int], None],
) -> int | None:
    """Train one batch (``head``: two training examples) through each of ``msts`` until
    one succeeds; raise ``EstimatorError`` if none does.

    The first estimator built is checked for the run's metric (``ConfigError``), and the
    first model output for the labels' range (``check_labels(num_classes)``, which
    raises ``DataError``). Returns the model's number of classes when it could tell.
    """
    if not msts:
        return None
    failures: list[tuple[MST, str]] = []
    checked_metric = False
    for mst in msts:
        with _globals_restored():
            try:
                estimator = _build(procedure, mst)
            except _CannotTrain as e:
                failures.append((mst, str(e)))
                continue
            if not checked_metric:
                _check_metric(procedure, estimator)
                checked_metric = True
            try:
                if isinstance(estimator, Estimator):
                    return _one_batch(estimator, head, check_labels)
                _evaluate_batch(estimator, head)
                return None
            except _CannotTrain as e:
                failures.append((mst, str(e)))
    first, reason = failures[0]
    others = [m.id for m, _ in failures[1:]]
    also = f" (MST{'s' if len(others) > 1 else ''} {_ids(others)} failed too)" if others else ""
    raise EstimatorError(
        f"MST {first.id} (params {first.params}) cannot train one batch of the training data, "
        f"so the run did not start{also}: {reason}"
    )


def _build(procedure: Procedure, mst: MST) -> Trainable:
    """The MST's estimator, built as the workers build it (under the MST's seed)."""
    torch.manual_seed(mst.seed)
    try:
        estimator = procedure.make_estimator(dict(mst.params))
    except EstimatorError as e:  # raised by Estimator(...) in the factory
        raise _CannotTrain(f"the Estimator that make_estimator built is invalid: {e}") from e
    except Exception as e:
        raise _CannotTrain(f"make_estimator raised {_what(e)}; fix make_estimator") from e
    if not isinstance(estimator, Trainable):
        got = "None (does it end with `return`?)" if estimator is None else type(estimator).__name__
        raise _CannotTrain(
            f"make_estimator returned {got}, not a modelhopper.Estimator; return "
            "mh.Estimator(model=..., optimizer=..., loss=...) for every MST's params"
        )
    return estimator


def _check_metric(procedure: Procedure, estimator: Trainable) -> None:
    names = metric_names(estimator.metrics)
    for metric in procedure.required_metrics():
        if metric not in names:
            raise ConfigError(
                f"unknown metric {metric!r}; this run reports {names} "
                "(add the metric to Estimator.metrics, e.g. metrics=['accuracy'])"
            )


def _evaluate_batch(estimator: Trainable, head: tuple[np.ndarray, np.ndarray]) -> None:
    """An estimator of another kind (Keras): evaluate it on the batch (no state changes)."""
    x, y = np.array(head[0]), np.array(head[1])
    try:
        estimator.evaluate_pass(x, y)
    except Exception as e:
        raise _CannotTrain(
            f"the model cannot take a batch of x {x.shape} {x.dtype} with labels {y.shape} "
            f"{y.dtype}: {_what(e)}; make its input match the examples and its loss the labels"
        ) from e


def _one_batch(
    estimator: Estimator, head: tuple[np.ndarray, np.ndarray], check_labels: Callable[[int], None]
) -> int | None:
    """Forward, loss and backward on a copy of the model; the number of classes if known."""
    try:
        x, y = torch.from_numpy(np.array(head[0])), torch.from_numpy(np.array(head[1]))
    except TypeError:  # not numeric: nothing a model could train on, and the data says so
        return None
    with torch.enable_grad():
        try:  # on the CPU, as a worker makes its batches
            if estimator.representation is not None:
                x = estimator.representation(x)
            if estimator.train_transform is not None:
                torch.manual_seed(0)  # any seed: the draws are undone with the RNG state
                x = estimator.train_transform(x)
        except Exception as e:
            raise _CannotTrain(
                f"the representation or train_transform failed on a batch of x "
                f"{_shape(x)}: {_what(e)}; fix it to take and return a batch tensor"
            ) from e
        try:
            model = copy.deepcopy(estimator.model)  # the factory may share modules between MSTs
        except Exception:
            model = estimator.model  # not copyable: a throwaway estimator's model all the same
        parameter = next(model.parameters(), None)
        if parameter is not None:
            x, y = x.to(parameter.device), y.to(parameter.device)
        try:
            output = model.train(len(y) > 1)(x)  # training mode, as on the workers
        except Exception as e:
            raise _CannotTrain(
                f"the model cannot take a batch of x {_shape(x)}: {_what(e)}; make the "
                "model's input layer match the examples' shape and dtype, or convert x "
                "with train_transform (e.g. images to float)"
            ) from e
        num_classes = _classes(output, y, check_labels)
        if isinstance(estimator.loss, str):  # MODEL_LOSS: the model computes it
            loss = _model_loss(model, x, y)
        else:
            loss = _loss(estimator, output, y)
        try:
            loss.backward()
        except Exception as e:
            raise _CannotTrain(
                f"the loss's backward pass failed: {_what(e)}; the loss must be computed "
                "from the model's output, and the model must have parameters that "
                "require grad"
            ) from e
    return num_classes


def _classes(output: Any, y: torch.Tensor, check_labels: Callable[[int], None]) -> int | None:
    """The model's number of classes (for a class-index output); checks the labels' range."""
    if not isinstance(output, torch.Tensor):
        raise _CannotTrain(
            f"the model returned {type(output).__name__}, not a tensor; return the "
            "output tensor from forward()"
        )
    if output.ndim == 2 and output.shape[1] > 1 and not y.is_floating_point() and y.ndim == 1:
        check_labels(int(output.shape[1]))
        return int(output.shape[1])
    return None


def _model_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    try:
        loss = model(x, labels=y).loss
    except Exception as e:
        raise _CannotTrain(
            f"loss='model': the model cannot compute its loss as model(x, labels=y).loss "
            f"for labels {_shape(y)}: {_what(e)}; pass a loss function instead, or make "
            "forward take labels= and return an object with .loss and .logits"
        ) from e
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise _CannotTrain("loss='model': model(x, labels=y).loss must be one number")
    return loss


def _loss(estimator: Estimator, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    assert callable(estimator.loss)
    try:
        loss = estimator.loss(output, y)
    except Exception as e:
        raise _CannotTrain(
            f"the loss cannot compare the model's output {_shape(output)} with the labels "
            f"{_shape(y)} (first label {y.flatten()[0].item()!r}): {_what(e)}; "
            f"{_loss_hint(output, y)}"
        ) from e
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = _shape(loss) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise _CannotTrain(
            f"the loss must return one number (a scalar tensor), got {got}; use "
            "reduction='mean' (the default) or 'sum'"
        )
    return loss


def _loss_hint(output: torch.Tensor, y: torch.Tensor) -> str:
    if y.is_floating_point() and output.ndim == 2 and output.shape[1] > 1:
        return (
            "a classification loss such as CrossEntropyLoss needs integer class labels "
            f"0..{output.shape[1] - 1}: make y int64 (y.astype('int64')), or use a regression "
            "loss such as MSELoss for float targets"
        )
    return "make the loss, the model's output and the labels agree in shape and dtype"


# -- helpers ------------------------------------------------------------------------------
@contextlib.contextmanager
def _globals_restored() -> Iterator[None]:
    """Torch's global RNG state and flush-denormal mode as they were before the block."""
    flushed = _denormals_flushed()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        if _denormals_flushed() != flushed:
            torch.set_flush_denormal(flushed)


def _denormals_flushed() -> bool:
    """Whether torch flushes denormal floats now (it has no getter: compute one)."""
    return bool(torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item() == 0.0)


def _shape(t: torch.Tensor) -> str:
    return f"of shape {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def _what(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _ids(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids[:-1]) + (" and " if len(ids) > 1 else "") + str(ids[-1])
