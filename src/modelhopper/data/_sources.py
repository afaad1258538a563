"""Conversions of pandas DataFrames, Parquet files and torch datasets into arrays.

``Dataset.from_pandas`` / ``from_parquet`` / ``from_torch`` call these; each error names
the split and the column or item at fault. pandas, pyarrow and torch are imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from modelhopper.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["frame_arrays", "read_parquet", "torch_arrays"]


# ----------------------------------------------------------------- pandas / parquet


def frame_arrays(
    frame: Any, name: str, label: str, features: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """A DataFrame's feature columns and label column as arrays, every column checked."""
    import pandas as pd  # lazily: only pandas users pay for importing it

    if not isinstance(frame, pd.DataFrame):
        raise DataError(
            f"the {name!r} split must be a pandas.DataFrame, got {type(frame).__name__}; use "
            f"Dataset.from_numpy for arrays"
        )
    columns = [str(c) for c in frame.columns]
    if label not in frame.columns:
        raise DataError(
            f"label column {label!r} not found in the {name!r} split; its columns are "
            f"{columns}; pass label= one of them"
        )
    feature_names = _feature_names(frame, name, label, features)
    for column in [*feature_names, label]:
        _check_numeric_column(frame[column], column, name, is_label=column == label)
    x = _frame_to_numpy(frame[feature_names])
    y = _frame_to_numpy(frame[[label]])[:, 0]
    return x, y


def _feature_names(
    frame: pd.DataFrame, name: str, label: str, features: Sequence[str] | None
) -> list[Any]:
    if features is None:
        names = [c for c in frame.columns if c != label]
    else:
        if isinstance(features, str):
            raise DataError(
                f"features must be a sequence of column names, got the string {features!r}; "
                f"write features=[{features!r}]"
            )
        names = list(features)
        missing = [c for c in names if c not in frame.columns]
        if missing:
            raise DataError(
                f"feature columns {missing} not found in the {name!r} split; its columns are "
                f"{[str(c) for c in frame.columns]}"
            )
        if label in names:
            raise DataError(
                f"the label column {label!r} is also listed in features; remove it from "
                f"features so the model cannot see the answer"
            )
    if not names:
        raise DataError(
            f"the {name!r} split has no feature columns besides the label {label!r}; add "
            f"feature columns or pass features=[...]"
        )
    return names


def _check_numeric_column(column: pd.Series, column_name: Any, name: str, is_label: bool) -> None:
    from pandas.api.types import is_bool_dtype, is_complex_dtype, is_numeric_dtype

    dtype = column.dtype
    if (is_numeric_dtype(dtype) or is_bool_dtype(dtype)) and not is_complex_dtype(dtype):
        return
    if is_label:
        raise DataError(
            f"label column {column_name!r} of the {name!r} split has dtype {dtype}; labels "
            f"must be numeric — encode classes as integers 0..K-1 (e.g. pandas.factorize)"
        )
    raise DataError(
        f"column {column_name!r} of the {name!r} split has dtype {dtype}; features must be "
        f"numeric — encode categorical columns (e.g. pandas.get_dummies) before building the "
        f"Dataset"
    )


def _frame_to_numpy(frame: pd.DataFrame) -> np.ndarray:
    array = frame.to_numpy()
    if array.dtype == object:
        # Mixed or nullable (pd.NA) numeric columns; missing values become NaN, which Split
        # then reports with a count.
        array = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    return array


def read_parquet(
    path: str | os.PathLike[str], name: str, label: str, features: Sequence[str] | None
) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise DataError(
            f"parquet file for the {name!r} split not found: {os.fspath(path)!r}; check the "
            f"path (relative paths are from {os.getcwd()!r})"
        )
    # Read only the needed columns when they are known; missing ones are reported by name
    # in frame_arrays, so fall back to all columns if any is absent.
    columns = None
    try:
        if features is not None and not isinstance(features, str):
            wanted = [*features, label]
            available = set(pq.read_schema(path).names) if os.path.isfile(path) else set()
            if all(c in available for c in wanted):
                columns = wanted
        return pq.read_table(path, columns=columns).to_pandas()
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"could not read the parquet file for the {name!r} split at {os.fspath(path)!r}: "
            f"{e}; check that it is a valid Parquet file"
        ) from e


# -------------------------------------------------------------------------- torch


def torch_arrays(torch_set: Any, name: str, torch: Any) -> tuple[np.ndarray, np.ndarray]:
    """A torch dataset of (x, y) pairs stacked into two arrays."""
    if isinstance(torch_set, torch.utils.data.TensorDataset) and len(torch_set.tensors) == 2:
        # Fast path: the tensors already are the stacked arrays.
        return tuple(_to_numpy(t, torch) for t in torch_set.tensors)  # type: ignore[return-value]
    items = _items(torch_set, name)
    xs, ys = [], []
    for index, item in enumerate(items):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise DataError(
                f"item {index} of the {name!r} torch dataset is a {type(item).__name__}; "
                f"each item must be an (x, y) pair"
            )
        xs.append(_to_numpy(item[0], torch))
        ys.append(_to_numpy(item[1], torch))
    if not xs:
        return np.empty((0,)), np.empty((0,))
    return _stack(xs, "x", name), _stack(ys, "y", name)


def _items(torch_set: Any, name: str) -> Iterator[Any]:
    if hasattr(torch_set, "__len__") and hasattr(torch_set, "__getitem__"):
        return (torch_set[i] for i in range(len(torch_set)))
    if hasattr(torch_set, "__iter__"):
        return iter(torch_set)
    raise DataError(
        f"the {name!r} split must be a torch.utils.data.Dataset of (x, y) pairs, got "
        f"{type(torch_set).__name__}"
    )


def _to_numpy(value: Any, torch: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _stack(arrays: list[np.ndarray], what: str, name: str) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        index, other = next((i, a.shape) for i, a in enumerate(arrays) if a.shape != first)
        raise DataError(
            f"{what} of the {name!r} torch dataset has items of different shapes (item 0 is "
            f"{first}, item {index} is {other}); pad or crop them to one shape"
        )
    return np.stack(arrays)
