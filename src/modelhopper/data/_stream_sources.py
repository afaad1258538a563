"""Record sources: image folders, Parquet datasets, Hugging Face datasets, torch Datasets.

Each reads its examples in bounded chunks (and, where it can, any rows at
random); none ever holds a whole split. Checks that need no decoding of every
record (layout, classes, schema, label column, first record) run when the
source is built, so bad data is reported before any worker starts, naming the
file and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelhopper.data._encoded import IMAGE_EXTENSIONS, Codec
from modelhopper.data._streaming import RecordChunk, RecordSource, dense_rows, label_rows
from modelhopper.errors import DataError

__all__ = [
    "HuggingFaceSource",
    "ImageFolderSource",
    "ParquetSource",
    "TorchSource",
    "scan_image_folder",
]


# ------------------------------------------------------------------ image folders


def scan_image_folder(
    root: str | os.PathLike[str], name: str, classes: Sequence[str] | None = None
) -> tuple[list[str], list[Path], np.ndarray, np.ndarray]:
    """``root/<class>/**/<image>``: class names, files, labels and file sizes, sorted.

    ``classes`` (those of the training root) fixes the label of each class name,
    so every split numbers classes alike.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(
            f"image folder for the {name!r} split not found: {os.fspath(root)!r}; give a "
            f"folder with one sub-folder per class (relative paths are from {os.getcwd()!r})"
        )
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(
            f"{os.fspath(root)!r} has no class sub-folders; lay images out as "
            "root/<class name>/<image file>, one sub-folder per class"
        )
    if classes is not None and sorted(classes) != found:
        raise DataError(
            f"the {name!r} split's classes {found} differ from the training split's "
            f"{sorted(classes)}; every split needs the same class folders"
        )
    names = list(classes) if classes is not None else found
    files: list[Path] = []
    labels: list[int] = []
    for label, class_name in enumerate(names):
        images = _class_images(folder / class_name)
        files.extend(images)
        labels.extend([label] * len(images))
    sizes = np.fromiter((f.stat().st_size for f in files), dtype=np.int64, count=len(files))
    return names, files, np.asarray(labels, dtype=np.int64), sizes


def _class_images(folder: Path) -> list[Path]:
    images = []
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for file_name in sorted(names):
            if file_name.startswith("."):
                continue  # .DS_Store and other hidden files are not examples
            path = Path(directory) / file_name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{str(path)!r} in class folder {folder.name!r} is not an image (its "
                    f"extension is {path.suffix or 'missing'}; images end in "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}); move it out of the folder"
                )
            images.append(path)
    if not images:
        raise DataError(
            f"class folder {str(folder)!r} has no images; add images or remove the folder "
            "(its class would have no examples)"
        )
    return images


class ImageFolderSource(RecordSource):
    """Image files, read as bytes (encoded), labelled by their class folder."""

    random_access = True

    def __init__(
        self, files: Sequence[Path], labels: np.ndarray, sizes: np.ndarray, codec: Codec, root: Path
    ) -> None:
        self.files = list(files)
        self._labels = labels
        self._sizes = sizes
        self.codec = codec
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def nbytes(self) -> int:
        return int(self._sizes.sum())

    def chunks(self, max_bytes: int) -> Iterator[RecordChunk]:
        for rows in _byte_bounded(self._sizes, max_bytes):
            yield self.take(rows)

    def take(self, rows: np.ndarray) -> RecordChunk:
        records = [self._read(self.files[r]) for r in rows.tolist()]
        return RecordChunk(records, self._labels[rows], [str(self.files[r]) for r in rows])

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise DataError(
                f"cannot read {str(path)!r}: {e}; check that the file exists and is readable"
            ) from e

    def describe(self) -> str:
        return f"{len(self)} images under {str(self.root)!r}"


def _byte_bounded(sizes: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    """Consecutive row ranges whose sizes sum to about ``max_bytes`` (one row at least)."""
    start, total = 0, 0
    for row, size in enumerate(sizes.tolist()):
        if row > start and total + size > max_bytes:
            yield np.arange(start, row)
            start, total = row, 0
        total += size
    if start < len(sizes):
        yield np.arange(start, len(sizes))


def subset(source: ImageFolderSource, rows: np.ndarray) -> ImageFolderSource:
    """The images at ``rows`` (a seeded split of one folder into train/validation/test)."""
    rows = np.sort(rows)
    assert source.codec is not None  # image folders are always encoded
    return ImageFolderSource(
        [source.files[r] for r in rows.tolist()], source.labels[rows], source._sizes[rows],
        source.codec, source.root,
    )  # fmt: skip


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
