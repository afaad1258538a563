"""Encoded records: examples kept as their file bytes (JPEG, PNG) in a shard, decoded per batch.

A shard's encoded examples are one Arrow IPC file (``train_x.arrow``): a binary
column ``x`` holding each record's bytes as read from its source, and a string
column ``origin`` naming where it came from (a file, or a row of a file), so an
error met while training names the record at fault. Arrow IPC is what Hugging
Face ``datasets`` stores on disk; it is memory-mapped here and read zero-copy,
so a shard larger than memory is paged in, never loaded whole, and any record
can be read at random (every epoch draws its own order).

The ``Codec`` says how bytes become an example (a uint8 ``C x H x W`` array for
images) and what to do with one that cannot be decoded.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelhopper.errors import DataError

__all__ = [
    "BadRecordError",
    "Codec",
    "EncodedColumn",
    "EncodedWriter",
    "IMAGE_EXTENSIONS",
    "ON_BAD_RECORD",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
ON_BAD_RECORD = ("raise", "skip")
_MODES = (None, "L", "RGB")


class BadRecordError(DataError):
    """A record that cannot be decoded; the message names its origin (file, row)."""


@dataclass(frozen=True)
class Codec:
    """How encoded records become examples: ``kind="image"`` decodes with Pillow.

    ``mode``: ``"L"`` (1 channel), ``"RGB"`` (3 channels) or None to keep each
    file's own (grey stays 1 channel, colour 3; palettes and alpha become RGB).
    ``on_bad_record``: ``"raise"`` fails the MST that met it, naming the record;
    ``"skip"`` leaves the record out of its batch and counts it.
    """

    kind: str = "image"
    mode: str | None = None
    on_bad_record: str = "raise"

    def __post_init__(self) -> None:
        if self.kind != "image":
            raise DataError(f"unknown codec kind {self.kind!r}; the known kind is 'image'")
        if self.mode not in _MODES:
            raise DataError(
                f"mode must be 'L' (grey), 'RGB' or None (each image's own), got {self.mode!r}"
            )
        if self.on_bad_record not in ON_BAD_RECORD:
            raise DataError(
                f"on_bad_record must be 'raise' or 'skip', got {self.on_bad_record!r}; 'skip' "
                "leaves unreadable records out and counts them"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def decode(self, data: bytes | memoryview, origin: str | Callable[[], str]) -> np.ndarray:
        """One record as a uint8 ``C x H x W`` array; BadRecordError names ``origin``
        (a callable is asked only then: most records never need it)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                image = _converted(image, self.mode)
                array = np.array(image)  # a writable copy: torch shares its memory
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            where = origin() if callable(origin) else origin
            reason = (
                "its bytes are no image format Pillow reads"
                if isinstance(e, UnidentifiedImageError)
                else f"{type(e).__name__}: {e}"
            )
            raise BadRecordError(
                f"cannot decode {where} as an image ({reason}); replace or "
                "remove the file, or pass on_bad_record='skip' to leave such records out"
            ) from e
        return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _converted(image: Any, mode: str | None) -> Any:
    if mode is not None:
        return image.convert(mode) if image.mode != mode else image
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("1", "I;16", "I", "F"):
        return image.convert("L")
    return image.convert("RGB")  # palette, alpha, CMYK...


# ----------------------------------------------------------------------- reading


class EncodedColumn:
    """A shard's encoded records, memory-mapped from an Arrow IPC file; random access by row."""

    def __init__(self, path: str | os.PathLike[str], codec: Codec) -> None:
        import pyarrow as pa

        self.path = os.fspath(path)
        self.codec = codec
        try:
            table = pa.ipc.open_file(pa.memory_map(self.path)).read_all()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"cannot open encoded shard file {self.path!r}: {e}") from e
        # Per record batch: offsets (a numpy view) and the data buffer, both in the mapping.
        self._parts: list[tuple[np.ndarray, Any, Any]] = []
        starts = [0]
        for x, origin in zip(table.column("x").chunks, table.column("origin").chunks, strict=True):
            offsets = np.frombuffer(x.buffers()[1], dtype=np.int64)[
                x.offset : x.offset + len(x) + 1
            ]
            self._parts.append((offsets, x.buffers()[2], origin))
            starts.append(starts[-1] + len(x))
        self._starts = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),)

    @property
    def nbytes(self) -> int:
        return int(sum(int(offsets[-1] - offsets[0]) for offsets, _, _ in self._parts))

    def record(self, row: int) -> memoryview:
        part, offsets, data = self._locate(row)
        local = row - int(self._starts[part])
        return memoryview(data)[int(offsets[local]) : int(offsets[local + 1])]

    def origin(self, row: int) -> str:
        part, _, _ = self._locate(row)
        return str(self._parts[part][2][row - int(self._starts[part])].as_py())

    def _locate(self, row: int) -> tuple[int, np.ndarray, Any]:
        if not 0 <= row < len(self):
            raise IndexError(f"record {row} of a shard of {len(self)}")
        part = int(np.searchsorted(self._starts, row, side="right")) - 1
        offsets, data, _ = self._parts[part]
        return part, offsets, data

    def decode(self, rows: Sequence[int] | np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        """Decoded examples of ``rows`` and the positions (in ``rows``) that were kept.

        With ``on_bad_record="skip"`` an undecodable record is left out; otherwise
        its BadRecordError propagates (the MST fails, naming the record).
        """
        examples, kept = [], []
        for position, row in enumerate(np.asarray(rows).tolist()):
            try:
                examples.append(
                    self.codec.decode(self.record(row), functools.partial(self.origin, row))
                )
            except BadRecordError:
                if self.codec.on_bad_record == "raise":
                    raise
                continue
            kept.append(position)
        return examples, kept


# ----------------------------------------------------------------------- writing


class EncodedWriter:
    """Appends encoded records to an Arrow IPC file; a record batch per ~1 MiB of records.

    Batches are cut by the content alone, so the same records in the same order
    give the same bytes however they were fed in (which keeps the shards'
    fingerprint independent of chunk sizes). A writer holds at most about
    ``flush_bytes`` of records (sharding counts them in its memory bound). The
    file's SHA-256 is computed as it is written.
    """

    flush_bytes = 2**20  # a constant: batch boundaries must not depend on memory_bytes

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import pyarrow as pa

        self._pa = pa
        self.path = Path(path)
        self._schema = pa.schema([("x", pa.large_binary()), ("origin", pa.string())])
        self._sink = _HashingFile(self.path)
        self._writer = pa.ipc.new_file(self._sink, self._schema)
        self._records: list[bytes] = []
        self._origins: list[str] = []
        self._buffered = 0
        self.n_records = 0
        self.nbytes = 0

    def append(self, records: Sequence[bytes], origins: Sequence[str]) -> None:
        for record, origin in zip(records, origins, strict=True):
            self._records.append(record)
            self._origins.append(origin)
            self._buffered += len(record)
            if self._buffered >= self.flush_bytes:
                self._flush()

    def _flush(self) -> None:
        if not self._records:
            return
        pa = self._pa
        batch = pa.record_batch(
            [pa.array(self._records, pa.large_binary()), pa.array(self._origins, pa.string())],
            schema=self._schema,
        )
        self._writer.write_batch(batch)
        self.n_records += len(self._records)
        self.nbytes += self._buffered
        self._records, self._origins, self._buffered = [], [], 0

    def close(self) -> str:
        """Finish the file; returns its SHA-256 (hex)."""
        self._flush()
        self._writer.close()
        return self._sink.close()


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it (Arrow writes to it)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._digest.update(view)
        return self._file.write(view)

    def close(self) -> str:  # type: ignore[override]
        if not self._file.closed:
            self._file.close()
        super().close()
        return self._digest.hexdigest()
