"""Parquet files and (partitioned) directories as a record source, read with pyarrow.dataset.

The schema, the label column and the feature columns are checked when the source
is built; rows are read record batch by record batch, in file order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from modelhopper.data._encoded import Codec
from modelhopper.data._streaming import RecordChunk, RecordSource, dense_rows, label_rows
from modelhopper.errors import DataError

__all__ = ["ParquetSource"]


# ----------------------------------------------------------------------- Parquet


class ParquetSource(RecordSource):
    """A Parquet file, several, or a (partitioned) directory, read with ``pyarrow.dataset``.

    Features: numeric columns (one value each, stacked into a vector), one
    fixed-size list column (an array per example, reshaped by ``shape``), or one
    binary column of encoded images (``codec`` given). Streamed by record batch.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        name: str,
        *,
        label: str,
        features: Sequence[str] | None,
        codec: Codec | None,
        shape: Sequence[int] | None = None,
    ) -> None:
        import pyarrow.dataset as ds

        self.name = name
        self.label = label
        self.codec = codec
        self._paths = _parquet_files(paths, name)
        _check_same_schema(self._paths, name)
        self.dataset = ds.dataset(self._paths, format="parquet")
        self.schema = self.dataset.schema
        self.features = _parquet_features(self.schema, name, label, features, codec)
        self.shape = tuple(shape) if shape is not None else None
        self._n = self.dataset.count_rows()
        self._sizes = [os.path.getsize(p) for p in self._paths]
        if codec is not None and self._n:
            first = self.head(1)  # a column of another format shows now, not on a worker
            codec.decode(first.x[0], (first.origins or ["row 0"])[0])

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return int(sum(self._sizes))

    @property
    def labels(self) -> np.ndarray:
        # One column of small numbers: read whole, it is a few bytes per example.
        column = self.dataset.to_table(columns=[self.label]).column(self.label)
        return label_rows(column.to_numpy(), f"column {self.label!r} of the {self.name!r} split")

    def chunks(self, max_bytes: int) -> Iterator[RecordChunk]:
        row_bytes = max(1, self.nbytes // max(self._n, 1))
        batch_size = max(1, max_bytes // (4 * row_bytes))  # Parquet decodes to more than it stores
        # Fragment by fragment, in file order, so the row order never depends on threads.
        start = 0
        for fragment in self.dataset.get_fragments():
            for batch in fragment.to_batches(
                columns=[*self.features, self.label], batch_size=batch_size, use_threads=True
            ):
                if batch.num_rows:
                    yield self._chunk(batch, fragment.path, start)
                    start += batch.num_rows

    def _chunk(self, batch: Any, path: str, start: int) -> RecordChunk:
        where = f"rows {start}-{start + batch.num_rows - 1} of the {self.name!r} split ({path})"
        y = label_rows(_column_numpy(batch.column(self.label), self.label, where), where)
        if self.codec is not None:
            column = batch.column(self.features[0])
            records = [b if b is not None else b"" for b in column.to_pylist()]
            origins = [f"row {start + i} of {path}" for i in range(len(records))]
            return RecordChunk(records, y, origins)
        arrays = [_column_numpy(batch.column(c), c, where) for c in self.features]
        if len(arrays) == 1 and arrays[0].ndim > 1:
            x = arrays[0]
            if self.shape is not None:
                x = x.reshape(len(x), *self.shape)
        else:
            x = np.stack(arrays, axis=1)
        return RecordChunk(dense_rows(x, where), y)

    def describe(self) -> str:
        return f"{len(self._paths)} Parquet file(s), {self._n} rows"


def _parquet_files(paths: Any, name: str) -> list[str]:
    given = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    files: list[str] = []
    for path in given:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(d, f)
                for d, _, names in os.walk(path)
                for f in names
                if f.endswith((".parquet", ".parq")) and not f.startswith((".", "_"))
            )
            if not found:
                raise DataError(
                    f"no .parquet files under {os.fspath(path)!r} for the {name!r} split; "
                    "give a Parquet file or a directory of them"
                )
            files.extend(found)
        elif os.path.isfile(path):
            files.append(os.fspath(path))
        else:
            raise DataError(
                f"parquet file for the {name!r} split not found: {os.fspath(path)!r}; check "
                f"the path (relative paths are from {os.getcwd()!r})"
            )
    return files


def _check_same_schema(files: list[str], name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = None
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                f"could not read the parquet file for the {name!r} split at {path!r}: {e}; "
                "check that it is a valid Parquet file"
            ) from e
        schema = schema.remove_metadata()
        if first is None:
            first = (path, schema)
        elif not schema.equals(first[1]):
            raise DataError(
                f"parquet file {path!r} of the {name!r} split has schema "
                f"{_schema_text(schema)} but {first[0]!r} has {_schema_text(first[1])}; "
                "every file of a split needs the same columns and types (rewrite it, or "
                "cast the column)"
            )


def _schema_text(schema: Any) -> str:
    return "{" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "}"


def _parquet_features(
    schema: Any, name: str, label: str, features: Sequence[str] | None, codec: Codec | None
) -> list[str]:
    import pyarrow as pa

    names = list(schema.names)
    if label not in names:
        raise DataError(
            f"label column {label!r} not found in the {name!r} split; its columns are "
            f"{names}; pass label= one of them"
        )
    if isinstance(features, str):
        raise DataError(
            f"features must be a sequence of column names, got the string {features!r}; "
            f"write features=[{features!r}]"
        )
    chosen = [c for c in names if c != label] if features is None else list(features)
    missing = [c for c in chosen if c not in names]
    if missing:
        raise DataError(
            f"feature columns {missing} not found in the {name!r} split; its columns are {names}"
        )
    if label in chosen:
        raise DataError(
            f"the label column {label!r} is also listed in features; remove it from "
            "features so the model cannot see the answer"
        )
    if not chosen:
        raise DataError(f"the {name!r} split has no feature columns besides the label {label!r}")
    types = {c: schema.field(c).type for c in chosen}
    binary = [c for c, t in types.items() if pa.types.is_binary(t) or pa.types.is_large_binary(t)]
    if codec is not None:
        if len(chosen) != 1 or not binary:
            raise DataError(
                f"image_column must name one binary column; the {name!r} split's features "
                f"are {chosen} ({', '.join(str(t) for t in types.values())})"
            )
        return chosen
    if binary:
        raise DataError(
            f"column {binary[0]!r} of the {name!r} split holds bytes; if they are encoded "
            f"images pass image_column={binary[0]!r}, else leave it out with features=[...]"
        )
    return chosen


def _column_numpy(column: Any, column_name: str, where: str) -> np.ndarray:
    import pyarrow as pa

    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        flat = column.flatten()
        values = flat.to_numpy(zero_copy_only=False)
        return values.reshape(len(column), -1)
    if column.null_count:
        raise DataError(
            f"column {column_name!r} has {column.null_count} missing values in {where}; "
            "impute them or drop those rows"
        )
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DataError(
            f"column {column_name!r} has type {kind} in {where}; features and labels must be "
            "numeric (or a fixed-size list of numbers, or encoded images via image_column=)"
        )
    return column.to_numpy(zero_copy_only=False)
