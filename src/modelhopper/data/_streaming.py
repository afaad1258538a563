"""Streamed splits: a split that stays where it lives (files, an Arrow table, a torch Dataset).

A ``RecordSource`` knows how many examples it has and yields them in bounded
chunks, in one fixed order; sharding routes each chunk's rows to their shards'
files as they pass, so the driver never holds more than a chunk (Invariant 7).
A source that can read any row cheaply (an image folder, a Hugging Face
dataset, a map-style torch Dataset) also offers ``take``, and then every shard
is built by its own thread, in parallel.

Examples are either *dense* (numbers of one shape per example, stored as
``.npy``) or *encoded* (each example's bytes, e.g. a JPEG, stored as such and
decoded per batch on the worker; see ``_encoded``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelhopper.data._encoded import BadRecordError, Codec
from modelhopper.data._split import Split
from modelhopper.errors import DataError

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "RecordChunk",
    "RecordSource",
    "StreamedSplit",
    "dense_rows",
    "label_rows",
    "stack_examples",
]

DEFAULT_MEMORY_BYTES = 256 * 2**20
_SPARE_HEAD_ROWS = 8  # on_bad_record="skip": the pre-flight check reads past bad records


@dataclass
class RecordChunk:
    """Consecutive rows of a source: dense ``x`` (an array) or encoded ``x`` (bytes each)."""

    x: np.ndarray | list[bytes]
    y: np.ndarray
    origins: list[str] | None = None  # encoded records: where each came from

    def __len__(self) -> int:
        return len(self.y)


class RecordSource(ABC):
    """One split's examples, read in chunks; ``codec`` is None for dense examples."""

    codec: Codec | None = None
    random_access: bool = False  # True: `take` reads any rows without reading the rest

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def chunks(self, max_bytes: int) -> Iterator[RecordChunk]:
        """Every row, in order, in chunks of about ``max_bytes`` (at least one row each)."""

    def take(self, rows: np.ndarray) -> RecordChunk:
        """The given rows (ascending), for sources with ``random_access``."""
        raise NotImplementedError(f"{type(self).__name__} is read in order only")

    @property
    def labels(self) -> np.ndarray | None:
        """Every label, when known without reading the examples (else None)."""
        return None

    @property
    def nbytes(self) -> int:
        """Bytes of the examples as stored (an estimate where the source cannot tell)."""
        return 0

    def head(self, k: int) -> RecordChunk:
        """The first ``k`` rows, or all if fewer (pre-flight checks read them)."""
        if self.random_access:
            return self.take(np.arange(min(k, len(self))))
        parts: list[RecordChunk] = []
        for chunk in self.chunks(1):  # the smallest chunks: a row or a few each
            parts.append(chunk)
            if sum(len(part) for part in parts) >= k:
                break
        return _concatenated(parts)

    def describe(self) -> str:
        return type(self).__name__


def _concatenated(chunks: list[RecordChunk]) -> RecordChunk:
    """Consecutive chunks of one source as one chunk."""
    if len(chunks) == 1:
        return chunks[0]
    y = np.concatenate([chunk.y for chunk in chunks])
    if isinstance(chunks[0].x, np.ndarray):
        return RecordChunk(np.concatenate([chunk.x for chunk in chunks]), y)
    records = [record for chunk in chunks for record in chunk.x]
    origins = [origin for chunk in chunks for origin in chunk.origins or []]
    return RecordChunk(records, y, origins)


@dataclass(frozen=True, eq=False)
class StreamedSplit:
    """A split read from its source while sharding, never held whole in memory."""

    source: RecordSource
    name: str = field(default="data", kw_only=True)
    # What sharding may hold in memory at once while it reads this split.
    memory_bytes: int = field(default=DEFAULT_MEMORY_BYTES, kw_only=True)

    def __post_init__(self) -> None:
        if (
            isinstance(self.memory_bytes, bool)
            or not isinstance(self.memory_bytes, int)
            or (self.memory_bytes < 2**20)
        ):
            raise DataError(
                f"memory_bytes must be an int >= 1 MiB (what sharding may hold in memory), "
                f"got {self.memory_bytes!r}; e.g. memory_bytes=256 * 2**20"
            )
        if len(self.source) == 0:
            raise DataError(
                f"the {self.name!r} split is empty ({self.source.describe()}); give it at "
                "least one example"
            )

    def __len__(self) -> int:
        return len(self.source)

    @property
    def encoded(self) -> bool:
        return self.source.codec is not None

    @property
    def y(self) -> np.ndarray | None:
        return self.source.labels

    @property
    def nbytes(self) -> int:
        return self.source.nbytes

    def head(self, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """The first ``k`` examples decoded and stacked, and their labels (a pre-flight check)."""
        codec = self.source.codec
        skip = codec is not None and codec.on_bad_record == "skip"
        chunk = self.source.head(k + _SPARE_HEAD_ROWS if skip else k)
        if isinstance(chunk.x, np.ndarray):
            return chunk.x[:k], chunk.y[:k]
        assert codec is not None  # encoded chunks come from sources with a codec
        examples, kept, first_error = [], [], None
        for row, (record, origin) in enumerate(zip(chunk.x, chunk.origins or [], strict=False)):
            try:
                examples.append(codec.decode(record, origin))
            except BadRecordError as e:
                if not skip:
                    raise
                first_error = first_error or e  # on_bad_record="skip": skipped, as in training
                continue
            kept.append(row)
            if len(examples) == k:
                break
        if not examples:
            assert first_error is not None
            raise first_error
        origins = [(chunk.origins or [])[row] for row in kept]
        return stack_examples(examples, origins), chunk.y[kept]

    def to_split(self) -> Split:
        """The whole split read into memory as a ``Split`` (decoded): for small data only."""
        xs, ys = [], []
        for chunk in self.source.chunks(self.memory_bytes):
            if isinstance(chunk.x, np.ndarray):
                xs.append(chunk.x)
            else:
                codec, origins = self.source.codec, chunk.origins or []
                assert codec is not None
                decoded = [codec.decode(r, o) for r, o in zip(chunk.x, origins, strict=True)]
                xs.append(stack_examples(decoded, origins))
            ys.append(chunk.y)
        return Split(np.concatenate(xs), np.concatenate(ys), name=self.name)

    def __repr__(self) -> str:
        kind = "encoded" if self.encoded else "dense"
        return f"StreamedSplit({self.name!r}, n={len(self)}, {kind}, {self.source.describe()})"


def stack_examples(examples: list[np.ndarray], origins: list[str]) -> np.ndarray:
    """Decoded examples as one array; examples of different shapes get an error naming two."""
    first = examples[0].shape
    for example, origin in zip(examples, origins, strict=False):
        if example.shape != first:
            raise DataError(
                f"examples of different shapes in one batch: {origins[0]} is {first} but "
                f"{origin} is {example.shape}; resize them to one size in a transform applied "
                "to each example, e.g. train_transform=mh.per_example(Resize(...)) and the "
                "same in eval_transform"
            )
    return np.stack(examples)


def dense_rows(x: Any, where: str) -> np.ndarray:
    """A chunk's dense features as Split would keep them (float32, checked finite)."""
    array = np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"features of {where} have dtype {array.dtype}; features must be numeric (or "
            "encoded images in a binary column)"
        )
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if bad.any():
            raise DataError(
                f"features of {where} have non-finite values (NaN or inf) in row "
                f"{int(np.flatnonzero(bad)[0])}; impute them or drop those rows"
            )
        array = array.astype(np.float32, copy=False)
    return np.ascontiguousarray(array)


def label_rows(y: Any, where: str) -> np.ndarray:
    """A chunk's labels as Split would keep them (int64 classes or float32 targets)."""
    array = np.asarray(y)
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"labels of {where} have dtype {array.dtype}; labels must be numeric — encode "
            "classes as integers 0..K-1"
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(f"labels of {where} have NaN or inf; drop those examples")
        return array.astype(np.float32, copy=False)
    return array.astype(np.int64, copy=False)
