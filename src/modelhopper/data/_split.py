"""Split: one split's examples and labels held in memory, validated and converted.

Everything is checked here, before any worker starts, so that a bad column or a NaN
is reported once with its fix rather than as a crash inside a sub-epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelhopper.errors import DataError

__all__ = ["Split"]


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
