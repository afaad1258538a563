"""Record sources for datasets held by other libraries: map-style torch and Hugging Face.

Image folders are in ``_image_folder`` and Parquet in ``_parquet``. Each source
reads its examples in bounded chunks (and any rows at random), never a whole split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from modelhopper.data._encoded import Codec
from modelhopper.data._streaming import RecordChunk, RecordSource, dense_rows, label_rows
from modelhopper.errors import DataError

__all__ = ["HuggingFaceSource", "TorchSource"]


# -------------------------------------------------------------------------- torch


class TorchSource(RecordSource):
    """A map-style torch Dataset of ``(x, y)`` pairs, read item by item in chunks.

    Items are decoded by the Dataset itself (its ``__getitem__``), so examples are
    dense; a chunk holds about ``max_bytes`` of them, never the whole dataset.
    """

    random_access = True

    def __init__(self, dataset: Any, name: str) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise DataError(
                f"the {name!r} split must be a map-style torch.utils.data.Dataset of (x, y) "
                f"pairs (with __len__ and __getitem__), got {type(dataset).__name__}"
            )
        self.dataset = dataset
        self.name = name
        self._n = len(dataset)
        self._row_bytes = 0

    def __len__(self) -> int:
        return self._n

    def chunks(self, max_bytes: int) -> Iterator[RecordChunk]:
        start = 0
        while start < self._n:
            step = max(1, max_bytes // max(self._row_bytes, 1)) if self._row_bytes else 1
            rows = np.arange(start, min(start + step, self._n))
            yield self.take(rows)
            start += len(rows)

    def take(self, rows: np.ndarray) -> RecordChunk:
        xs, ys = [], []
        first_shape = None
        for row in rows.tolist():
            item = self.dataset[row]
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise DataError(
                    f"item {row} of the {self.name!r} torch dataset is a {type(item).__name__}; "
                    "each item must be an (x, y) pair"
                )
            x = _numpy(item[0])
            if first_shape is None:
                first_shape = (row, x.shape)
            elif x.shape != first_shape[1]:
                raise DataError(
                    f"x of the {self.name!r} torch dataset has items of different shapes "
                    f"(item {first_shape[0]} is {first_shape[1]}, item {row} is {x.shape}); "
                    "pad or crop them to one shape"
                )
            xs.append(x)
            ys.append(_numpy(item[1]))
        where = f"items {int(rows[0])}-{int(rows[-1])} of the {self.name!r} torch dataset"
        x = dense_rows(np.stack(xs), where)
        self._row_bytes = max(1, x.nbytes // len(x))
        return RecordChunk(x, label_rows(np.stack(ys), where))

    @property
    def nbytes(self) -> int:
        return self._row_bytes * self._n

    def describe(self) -> str:
        return f"{type(self.dataset).__name__} of {self._n} items"


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    return np.asarray(value)


# ------------------------------------------------------------------ Hugging Face


class HuggingFaceSource(RecordSource):
    """A Hugging Face ``datasets.Dataset`` (Arrow, memory-mapped), read by row ranges.

    An ``Image`` feature is kept encoded (the bytes Hugging Face stores); other
    feature columns must be numeric (a value, or an array per example).
    """

    random_access = True

    def __init__(
        self, dataset: Any, name: str, *, label: str, features: Sequence[str] | None, codec: Codec
    ) -> None:
        self.name = name
        self.label = label
        columns = list(dataset.column_names)
        if label not in columns:
            raise DataError(
                f"label column {label!r} not found in the {name!r} split; its columns are "
                f"{columns}; pass label= one of them"
            )
        chosen = [c for c in columns if c != label] if features is None else list(features)
        missing = [c for c in chosen if c not in columns]
        if missing or not chosen:
            raise DataError(
                f"feature columns {missing or chosen} not usable in the {name!r} split; its "
                f"columns are {columns}; pass features=[...]"
            )
        images = [c for c in chosen if type(dataset.features[c]).__name__ == "Image"]
        if images and len(chosen) != 1:
            raise DataError(
                f"the {name!r} split mixes an image column {images[0]!r} with {chosen}; pick "
                f"the image alone with features=[{images[0]!r}]"
            )
        self.codec = codec if images else None
        self.features = chosen
        # Image columns are read as stored (bytes and path), never decoded here.
        self.dataset = dataset.cast_column(images[0], _undecoded_image()) if images else dataset
        self._n = len(dataset)

    def __len__(self) -> int:
        return self._n

    @property
    def labels(self) -> np.ndarray:
        table = self.dataset.data.table if hasattr(self.dataset.data, "table") else None
        column = table.column(self.label) if table is not None else None
        values = column.to_numpy() if column is not None else np.asarray(self.dataset[self.label])
        return label_rows(values, f"column {self.label!r} of the {self.name!r} split")

    @property
    def nbytes(self) -> int:
        return int(self.dataset.data.nbytes)

    def chunks(self, max_bytes: int) -> Iterator[RecordChunk]:
        step = max(1, max_bytes // max(1, self.nbytes // max(self._n, 1)))
        for start in range(0, self._n, step):
            yield self.take(np.arange(start, min(start + step, self._n)))

    def take(self, rows: np.ndarray) -> RecordChunk:
        import pyarrow as pa

        table = self.dataset.with_format("arrow")[rows.tolist()]
        where = f"rows {int(rows[0])}-{int(rows[-1])} of the {self.name!r} split"
        y = label_rows(table.column(self.label).to_numpy(), where)
        if self.codec is not None:
            items = table.column(self.features[0]).to_pylist()
            records = [(item or {}).get("bytes") or b"" for item in items]
            origins = [
                (item or {}).get("path") or f"row {r} of the {self.name!r} split"
                for item, r in zip(items, rows.tolist(), strict=True)
            ]
            return RecordChunk(records, y, origins)
        arrays = []
        for c in self.features:
            column = table.column(c)
            if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
                arrays.append(np.asarray(column.to_pylist()))
            else:
                arrays.append(column.to_numpy())
        x = arrays[0] if len(arrays) == 1 and arrays[0].ndim > 1 else np.stack(arrays, axis=1)
        return RecordChunk(dense_rows(x, where), y)

    def describe(self) -> str:
        return f"Hugging Face dataset of {self._n} rows"


def _undecoded_image() -> Any:
    import datasets

    return datasets.Image(decode=False)
