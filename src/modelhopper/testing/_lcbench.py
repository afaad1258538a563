"""YAHPO Gym's LCBench surrogate, read with onnxruntime: learning curves without training.

LCBench (Zimmer, Lindauer, Hutter 2021) trained 2,000 funnel-shaped MLPs on each of
34 OpenML tasks and recorded their learning curves; YAHPO Gym (v1.0.2 of its data)
fitted one neural surrogate to them (``model.onnx``, Apache-2.0). This module feeds
that model exactly as ``yahpo_gym.BenchmarkSet`` does (``benchmark_set.py``,
``benchmarks/lcbench.py``), without yahpo-gym and its old ConfigSpace:

- input ``x_cat`` (int32, shape (n, 1)): the task id's code from ``encoding.json``;
- input ``x_cont`` (float32, shape (n, 8)): the raw values, unscaled (the network
  scales them itself), in the order ``epoch, batch_size, learning_rate, momentum,
  weight_decay, num_layers, max_units, max_dropout``;
- output (float32, shape (n, 6)): ``time, val_accuracy, val_cross_entropy,
  val_balanced_accuracy, test_cross_entropy, test_balanced_accuracy``.

Units, as in LCBench: ``val_accuracy`` is a percentage (0-100); the balanced
accuracies are fractions (0-1); cross-entropies are in nats; ``time`` is the
cumulative training time in seconds up to and including ``epoch`` (it grows about
linearly with the epoch; the first epoch carries start-up cost). Epochs run 1-52.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelhopper._checks import check_int
from modelhopper.errors import ConfigError, DataError
from modelhopper.space import loguniform, randint, uniform

__all__ = ["LCBench", "LCBENCH_TARGETS", "LCBENCH_HYPERPARAMETERS", "MAX_EPOCH", "default_path"]

# yahpo_gym/benchmarks/lcbench.py: y_names and cont_names (after "epoch"), in order.
LCBENCH_TARGETS = (
    "time",
    "val_accuracy",
    "val_cross_entropy",
    "val_balanced_accuracy",
    "test_cross_entropy",
    "test_balanced_accuracy",
)
LCBENCH_HYPERPARAMETERS = (
    "batch_size",
    "learning_rate",
    "momentum",
    "weight_decay",
    "num_layers",
    "max_units",
    "max_dropout",
)
MAX_EPOCH = 52
_FILES = ("model.onnx", "config_space.json", "encoding.json")
_TASK = "OpenML_task_id"
_HOW_TO_GET = (
    "get YAHPO Gym's surrogate data (https://github.com/slds-lmu/yahpo_data, v1.0.2, "
    "folder lcbench/: model.onnx, config_space.json, encoding.json) and point "
    "MODELHOPPER_LCBENCH or LCBench(path=...) at that folder"
)


def _candidates() -> list[Path]:
    env = os.environ.get("MODELHOPPER_LCBENCH")
    repo = Path(__file__).resolve().parents[3]  # src/modelhopper/testing/_lcbench.py
    found = [Path(env)] if env else []
    return [*found, repo.parent / "shared" / "data" / "lcbench", Path("/work/shared/data/lcbench")]


def default_path() -> Path:
    """Where the surrogate's files are: ``$MODELHOPPER_LCBENCH``, else ``../shared/data/lcbench``
    beside the repository, else ``/work/shared/data/lcbench``; raises ``DataError`` if none
    holds them."""
    tried = _candidates()
    for path in tried:
        if all((path / name).is_file() for name in _FILES):
            return path
    raise DataError(
        f"the LCBench surrogate was not found in {', '.join(map(str, tried))}; {_HOW_TO_GET}"
    )


class LCBench:
    """The LCBench surrogate: ``predict(task, configs, epochs)`` gives learning-curve values.

    ``tasks`` are the 34 OpenML task ids (ints); ``space()`` is the search space as a
    modelhopper space dict. ``n_threads`` bounds onnxruntime's threads (default 1).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, n_threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(
                "the LCBench surrogate needs onnxruntime: pip install 'onnxruntime==1.32.0'"
            ) from e
        check_int("n_threads", n_threads)
        self.path = default_path() if path is None else Path(path)
        missing = [name for name in _FILES if not (self.path / name).is_file()]
        if missing:
            raise DataError(
                f"the LCBench surrogate folder {self.path} lacks {', '.join(missing)}; "
                f"{_HOW_TO_GET}"
            )
        space = json.loads((self.path / "config_space.json").read_text())
        self._hps: dict[str, dict[str, Any]] = {h["name"]: h for h in space["hyperparameters"]}
        self._codes: dict[str, int] = json.loads((self.path / "encoding.json").read_text())[_TASK]
        self.tasks: tuple[int, ...] = tuple(int(t) for t in self._hps[_TASK]["choices"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = n_threads
        self._session = ort.InferenceSession(
            str(self.path / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in self._session.get_inputs()]
        if names != ["x_cat", "x_cont"]:  # the order benchmark_set.py relies on
            raise DataError(f"{self.path / 'model.onnx'} has inputs {names}, not x_cat, x_cont")

    def space(self) -> dict[str, Any]:
        """The search space of config_space.json (task id and epoch left out).

        Log-scaled floats become ``loguniform``, linear ones ``uniform``, linear ints
        ``randint`` (high exclusive); the log-scaled ints (batch_size, max_units) become
        ``loguniform`` floats, which ``predict`` rounds to ints as ConfigSpace would.
        """
        domains: dict[str, Any] = {}
        for name in LCBENCH_HYPERPARAMETERS:
            hp = self._hps[name]
            low, high = hp["lower"], hp["upper"]
            if hp["log"]:
                domains[name] = loguniform(low, high)
            elif hp["type"] == "uniform_int":
                domains[name] = randint(int(low), int(high) + 1)
            else:
                domains[name] = uniform(low, high)
        return domains

    def hyperparameters(self) -> dict[str, dict[str, Any]]:
        """Each hyperparameter's definition in config_space.json (``type``, ``lower``,
        ``upper``, ``log``, ``default``), to build the same space in another library."""
        return {name: dict(self._hps[name]) for name in LCBENCH_HYPERPARAMETERS}

    def defaults(self) -> dict[str, float]:
        """The defaults of config_space.json: what ``config`` fills in for a missing name."""
        return {name: self._hps[name]["default"] for name in LCBENCH_HYPERPARAMETERS}

    def config(self, params: Mapping[str, Any]) -> dict[str, float]:
        """The seven hyperparameters from an MST's params, checked against their ranges;
        missing ones take their default, ints are rounded."""
        unknown = sorted(set(params) - set(LCBENCH_HYPERPARAMETERS))
        if unknown:
            raise ConfigError(
                f"params {unknown} are not LCBench hyperparameters; LCBench has "
                f"{list(LCBENCH_HYPERPARAMETERS)}: rename or drop them (build the space "
                "with LCBench().space())"
            )
        out = self.defaults()
        for name, value in params.items():
            hp = self._hps[name]
            number = float(value)
            if hp["type"] == "uniform_int":
                number = float(np.rint(number))
            low, high = hp["lower"], hp["upper"]
            if not (low * (1 - 1e-9) <= number <= high * (1 + 1e-9)):
                raise ConfigError(
                    f"params[{name!r}]={value!r} is outside LCBench's range [{low}, {high}]; "
                    "the surrogate was fitted only there: pass a value inside it"
                )
            out[name] = number
        return out

    def _task_code(self, task: int | str) -> int:
        if str(task) not in {str(t) for t in self.tasks}:
            raise ConfigError(
                f"task {task!r} is not an LCBench task; pick one of {list(self.tasks)}"
            )
        return int(self._codes[str(task)])

    def predict(
        self,
        task: int | str,
        configs: Sequence[Mapping[str, Any]],
        epochs: int | Sequence[int] | np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The surrogate's values for each (config, epoch) pair, in one ONNX call.

        ``configs`` (n mappings of hyperparameters, see ``config``) and ``epochs``
        (ints in 1-52) pair up row by row: ``epochs`` is one int (shape (n,) out), n ints
        (shape (n,)), or an (n or 1, k) array (shape (n, k): k epochs per config).
        Returns ``LCBENCH_TARGETS`` as float64 arrays of that shape, in LCBench's units
        (module docstring).
        """
        code = self._task_code(task)
        rows = np.array(
            [[c[name] for name in LCBENCH_HYPERPARAMETERS] for c in map(self.config, configs)],
            dtype=np.float64,
        ).reshape(-1, len(LCBENCH_HYPERPARAMETERS))
        epoch = np.asarray(epochs)
        if (
            epoch.dtype.kind not in "iu"
            or epoch.size == 0
            or epoch.min() < 1
            or epoch.max() > MAX_EPOCH
        ):
            raise ConfigError(
                f"epochs must be ints in [1, {MAX_EPOCH}] (LCBench's fidelity), got {epochs!r}"
            )
        if epoch.ndim and epoch.shape[0] not in (1, len(rows)):
            raise ConfigError(
                f"epochs must be one int, or have {len(rows)} rows (one per config) or 1, "
                f"got shape {epoch.shape}"
            )
        rows_index = np.arange(len(rows)).reshape(-1, *([1] * max(epoch.ndim - 1, 0)))
        index, epoch = np.broadcast_arrays(rows_index, epoch)
        x_cont = np.column_stack([epoch.ravel(), rows[index.ravel()]]).astype(np.float32)
        x_cat = np.full((len(x_cont), 1), code, dtype=np.int32)
        (out,) = self._session.run(None, {"x_cat": x_cat, "x_cont": x_cont})
        return {
            name: out[:, i].astype(np.float64).reshape(index.shape)
            for i, name in enumerate(LCBENCH_TARGETS)
        }

    def curves(
        self, task: int | str, configs: Sequence[Mapping[str, Any]]
    ) -> dict[str, np.ndarray]:
        """Whole learning curves: each target as an (n, 52) array (column j is epoch j + 1),
        plus ``epoch_seconds``: the seconds of each single epoch.

        ``epoch_seconds`` are the differences of ``time`` made non-decreasing (its
        running maximum; the surrogate's cumulative time dips for ~1% of epochs), so they
        are >= 0 and sum over the first e epochs to the running maximum at epoch e.
        """
        epochs = np.arange(1, MAX_EPOCH + 1)[None, :]
        values = self.predict(task, configs, epochs)
        total = np.maximum.accumulate(values["time"], axis=1)
        values["epoch_seconds"] = np.diff(total, axis=1, prepend=0.0)
        return values
