"""Split and Dataset: validated in-memory arrays, and constructors from numpy, pandas,
Parquet and torch datasets (their conversions to arrays are in ``_sources``).

Everything is checked here, before any worker starts, so that a bad column or a NaN
is reported once with its fix rather than as a crash inside a sub-epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modelhopper.data._sources import frame_arrays, read_parquet, torch_arrays
from modelhopper.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import torch.utils.data

__all__ = ["Split", "Dataset"]

_SPLIT_NAMES = ("train", "validation", "test")
_FRACTION_TOLERANCE = 1e-9


# --------------------------------------------------------------------------- Split


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays elementwise has no single answer
class Split:
    """Features ``x`` (one row per example) and labels or targets ``y`` of one split.

    On construction, floating ``x`` becomes float32, integer (or bool) ``y`` becomes
    int64, floating ``y`` becomes float32, and both are made C-contiguous.
    ``name`` only labels error messages ("train", "validation", "test").
    """

    x: np.ndarray
    y: np.ndarray
    name: str = field(default="data", kw_only=True)

    def __post_init__(self) -> None:
        x = _as_array(self.x, "x", self.name)
        y = _as_array(self.y, "y", self.name)
        _check_lengths(x, y, self.name)
        _check_x(x, self.name)
        _check_y(y, self.name)
        # Frozen dataclass: the converted arrays replace the inputs in place.
        object.__setattr__(self, "x", np.ascontiguousarray(_convert_x(x)))
        object.__setattr__(self, "y", np.ascontiguousarray(_convert_y(y)))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by ``x`` and ``y`` together."""
        return int(self.x.nbytes + self.y.nbytes)

    def __repr__(self) -> str:
        return (
            f"Split({self.name!r}, n={len(self)}, x={self.x.dtype}{tuple(self.x.shape[1:])}, "
            f"y={self.y.dtype}{tuple(self.y.shape[1:])})"
        )


def _as_array(value: Any, what: str, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim == 0:
        raise DataError(
            f"{what} of the {name!r} split is a scalar ({array!r}); it must be an array with "
            f"one row per example"
        )
    return array


def _check_lengths(x: np.ndarray, y: np.ndarray, name: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"x has {x.shape[0]} rows but y has {y.shape[0]} in the {name!r} split; "
            f"features and labels must have one row per example"
        )
    if x.shape[0] == 0:
        raise DataError(
            f"the {name!r} split is empty; give it at least one example "
            f"(e.g. hold out 20% of the training data)"
        )


def _is_numeric(dtype: np.dtype) -> bool:
    # Complex numbers are numeric to numpy but not a feature type any model here consumes.
    return dtype.kind in "biuf"


def _check_x(x: np.ndarray, name: str) -> None:
    if not _is_numeric(x.dtype):
        raise DataError(
            f"x of the {name!r} split has dtype {x.dtype}; features must be numeric — encode "
            f"categorical columns (e.g. pandas.get_dummies) before building the Dataset"
        )
    if x.dtype.kind == "f":
        n_bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if n_bad:
            raise DataError(
                f"x of the {name!r} split has {n_bad} non-finite values (NaN or inf); impute "
                f"them (e.g. with the training mean) or drop those rows before building the "
                f"Dataset"
            )


def _check_y(y: np.ndarray, name: str) -> None:
    if not _is_numeric(y.dtype):
        raise DataError(
            f"y of the {name!r} split has dtype {y.dtype}; labels must be numeric — encode "
            f"classes as integers 0..K-1 (e.g. pandas.factorize) before building the Dataset"
        )
    if y.ndim > 2:
        raise DataError(
            f"y of the {name!r} split has shape {y.shape}; labels must be 1-D (one label per "
            f"example) or 2-D (one target vector per example)"
        )
    if y.dtype.kind == "f":
        n_bad = int(y.size - np.count_nonzero(np.isfinite(y)))
        if n_bad:
            raise DataError(
                f"y of the {name!r} split has {n_bad} non-finite values (NaN or inf); drop "
                f"the examples without a target before building the Dataset"
            )


def _convert_x(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=False) if x.dtype.kind == "f" else x


def _convert_y(y: np.ndarray) -> np.ndarray:
    if y.dtype.kind == "f":
        return y.astype(np.float32, copy=False)
    return y.astype(np.int64, copy=False)


# ------------------------------------------------------------------------- Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train, a validation and an optional test :class:`Split` with matching shapes."""

    train: Split
    validation: Split
    test: Split | None = None

    def __post_init__(self) -> None:
        for name, split in zip(_SPLIT_NAMES, (self.train, self.validation, self.test), strict=True):
            if split is None and name == "test":
                continue
            if not isinstance(split, Split):
                raise DataError(
                    f"Dataset({name}=...) must be a Split, got {type(split).__name__}; build "
                    f"one with Split(x, y) or use Dataset.from_numpy(...)"
                )
        for name, split in self._named_splits():
            if name != "train":
                _check_compatible(self.train, split, name)

    # -- constructors -----------------------------------------------------------

    @classmethod
    def from_numpy(
        cls,
        x_train: Any,
        y_train: Any,
        x_val: Any,
        y_val: Any,
        x_test: Any | None = None,
        y_test: Any | None = None,
    ) -> Dataset:
        """Build a Dataset from arrays (anything ``numpy.asarray`` accepts)."""
        if (x_test is None) != (y_test is None):
            given, missing = ("x_test", "y_test") if y_test is None else ("y_test", "x_test")
            raise DataError(
                f"{given} was given but {missing} is None; pass both for a test split or "
                f"neither for none"
            )
        test = None if x_test is None or y_test is None else Split(x_test, y_test, name="test")
        return cls(
            Split(x_train, y_train, name="train"),
            Split(x_val, y_val, name="validation"),
            test,
        )

    @classmethod
    def from_pandas(
        cls,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        test: pd.DataFrame | None = None,
        *,
        label: str,
        features: Sequence[str] | None = None,
    ) -> Dataset:
        """Build a Dataset from DataFrames; ``features`` defaults to every column but ``label``."""
        frames = {"train": train, "validation": validation, "test": test}
        splits = {
            name: Split(*frame_arrays(frame, name, label, features), name=name)
            for name, frame in frames.items()
            if frame is not None
        }
        return cls(splits["train"], splits["validation"], splits.get("test"))

    @classmethod
    def from_parquet(
        cls,
        train: str | os.PathLike[str],
        validation: str | os.PathLike[str],
        test: str | os.PathLike[str] | None = None,
        *,
        label: str,
        features: Sequence[str] | None = None,
    ) -> Dataset:
        """Build a Dataset from Parquet files (or directories), one per split."""
        paths = {"train": train, "validation": validation, "test": test}
        splits = {
            name: Split(
                *frame_arrays(read_parquet(path, name, label, features), name, label, features),
                name=name,
            )
            for name, path in paths.items()
            if path is not None
        }
        return cls(splits["train"], splits["validation"], splits.get("test"))

    @classmethod
    def from_torch(
        cls,
        train: torch.utils.data.Dataset,
        validation: torch.utils.data.Dataset,
        test: torch.utils.data.Dataset | None = None,
    ) -> Dataset:
        """Materialise torch datasets of ``(x, y)`` pairs into numpy arrays."""
        import torch  # lazily: the core of modelhopper imports without torch

        torch_sets = {"train": train, "validation": validation, "test": test}
        splits = {
            name: Split(*torch_arrays(torch_set, name, torch), name=name)
            for name, torch_set in torch_sets.items()
            if torch_set is not None
        }
        return cls(splits["train"], splits["validation"], splits.get("test"))

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        y: Any,
        *,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        seed: int = 0,
    ) -> Dataset:
        """Shuffle ``(x, y)`` with ``seed`` and cut it into train / validation / test.

        ``fractions`` are (train, validation, test), summing to 1; a test fraction of 0
        gives no test split.
        """
        train_fraction, val_fraction, test_fraction = _check_fractions(fractions)
        _check_seed(seed)
        whole = Split(x, y, name="data")
        n_train, n_val, n_test = _split_sizes(
            len(whole), (train_fraction, val_fraction, test_fraction)
        )
        order = np.random.default_rng(seed).permutation(len(whole))
        train_index, val_index, test_index = np.split(order, [n_train, n_train + n_val])
        return cls(
            Split(whole.x[train_index], whole.y[train_index], name="train"),
            Split(whole.x[val_index], whole.y[val_index], name="validation"),
            Split(whole.x[test_index], whole.y[test_index], name="test") if n_test else None,
        )

    # -- properties -------------------------------------------------------------

    @property
    def n_features_shape(self) -> tuple[int, ...]:
        """Shape of one example's features (``x.shape[1:]``)."""
        return tuple(int(d) for d in self.train.x.shape[1:])

    @property
    def nbytes(self) -> int:
        """Bytes held by every split together."""
        return sum(split.nbytes for _, split in self._named_splits())

    @property
    def num_classes(self) -> int | None:
        """Largest integer label over all splits plus one; None for float targets."""
        if self.train.y.dtype.kind == "f":
            return None
        return max(int(split.y.max()) for _, split in self._named_splits()) + 1

    def check_labels(self, num_classes: int) -> None:
        """Raise DataError unless every integer label lies in ``[0, num_classes)``.

        Float targets (regression, soft labels) have nothing to check and pass.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
            raise DataError(
                f"num_classes must be an int, got {num_classes!r}; pass the model's output size"
            )
        if num_classes < 1:
            raise DataError(
                f"num_classes must be >= 1, got {num_classes}; pass the model's output size"
            )
        for name, split in self._named_splits():
            if split.y.dtype.kind == "f":
                continue
            low, high = int(split.y.min()), int(split.y.max())
            bad = high if high >= num_classes else low if low < 0 else None
            if bad is not None:
                raise DataError(
                    f"label {bad} in the {name!r} split is outside [0, {num_classes}) for a "
                    f"{num_classes}-class loss; check the model's output size (num_classes) "
                    f"or the labels"
                )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(split)}" for name, split in self._named_splits())
        classes = self.num_classes
        target = f"classes={classes}" if classes is not None else f"y={self.train.y.dtype}"
        return (
            f"Dataset({sizes}, x={self.train.x.dtype}{self.n_features_shape}, {target}, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )

    def _named_splits(self) -> Iterator[tuple[str, Split]]:
        yield "train", self.train
        yield "validation", self.validation
        if self.test is not None:
            yield "test", self.test


def _check_compatible(train: Split, other: Split, name: str) -> None:
    # Shapes and label kinds must agree, or one model cannot train on train and score on `other`.
    if other.x.shape[1:] != train.x.shape[1:]:
        raise DataError(
            f"x of the {name!r} split has feature shape {tuple(other.x.shape[1:])} but the "
            f"'train' split has {tuple(train.x.shape[1:])}; every split must have the same "
            f"features"
        )
    if other.y.shape[1:] != train.y.shape[1:]:
        raise DataError(
            f"y of the {name!r} split has shape {tuple(other.y.shape[1:])} per example but the "
            f"'train' split has {tuple(train.y.shape[1:])}; every split must have the same "
            f"kind of labels"
        )
    if other.y.dtype != train.y.dtype:
        raise DataError(
            f"y of the {name!r} split has dtype {other.y.dtype} but the 'train' split has "
            f"{train.y.dtype}; use integer class labels in every split or float targets in "
            f"every split"
        )


# -------------------------------------------------------------------- from_arrays


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(fractions) if isinstance(fractions, Sequence) else ()
    if len(values) != 3 or not all(_is_real(v) for v in values):
        raise DataError(
            f"fractions must be three numbers (train, validation, test), got {fractions!r}; "
            f"e.g. fractions=(0.6, 0.2, 0.2)"
        )
    train, validation, test = (float(v) for v in values)
    if not (train > 0 and validation > 0 and test >= 0) or not math.isfinite(test):
        raise DataError(
            f"fractions must be > 0 for train and validation and >= 0 for test, got "
            f"{fractions!r}; e.g. fractions=(0.8, 0.2, 0.0) for no test split"
        )
    total = train + validation + test
    if abs(total - 1.0) > _FRACTION_TOLERANCE:
        raise DataError(
            f"fractions must sum to 1, got {fractions!r} (sum {total:g}); e.g. "
            f"fractions=(0.6, 0.2, 0.2)"
        )
    return train, validation, test


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}; e.g. seed=0")


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    # Every split with a positive fraction gets at least one example; train takes the rest.
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n)) if fractions[2] > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        needed = 3 if n_test else 2
        raise DataError(
            f"x has {n} examples, too few to split with fractions={fractions}; need at least "
            f"{needed} (one per split) and, in practice, many more"
        )
    return n_train, n_val, n_test
