"""Sharding: shuffle once with the seed, split into one shard per worker, write each once.

A shard is a folder of files (train_x, train_y, val_x, val_y) that a worker
opens memory-mapped; no other process ever reads it during the run. Labels and
dense examples are ``.npy`` files; encoded examples (image bytes) are an Arrow
IPC file each (``_encoded``), decoded per batch on the worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import mmap
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelhopper._checks import check_int
from modelhopper.data._dataset import Dataset, Split
from modelhopper.data._encoded import Codec, EncodedColumn, EncodedWriter
from modelhopper.data._streaming import RecordChunk, RecordSource, StreamedSplit
from modelhopper.errors import ConfigError, DataError

__all__ = [
    "BuiltShard",
    "ShardInfo",
    "ShardData",
    "shard_indices",
    "shard_splits",
    "write_shards",
    "open_shard",
    "open_validation_part",
    "read_shard_info",
    "validation_file_names",
    "validation_files",
]

_ARRAYS = ("train_x", "train_y", "val_x", "val_y")


@dataclass(frozen=True)
class ShardInfo:
    index: int
    path: str
    n_train: int
    n_val: int
    nbytes: int
    # [lowest, highest] integer label of each split ("train", "val"), so labels can be
    # checked where the shard's files are not (a shard built on another node)
    labels: dict[str, list[int]] | None = None


@dataclass(frozen=True)
class BuiltShard:
    """What building one whole shard where it will be read gives back."""

    info: ShardInfo
    hashes: dict[str, str]  # file name -> SHA-256, for the data fingerprint


@dataclass(frozen=True)
class ShardData:
    train_x: np.ndarray | EncodedColumn
    train_y: np.ndarray
    val_x: np.ndarray | EncodedColumn
    val_y: np.ndarray
    path: str | None = None  # the shard's folder, when opened from one

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in _ARRAYS)


def shard_indices(n: int, n_shards: int, seed: int, *, salt: int = 0) -> list[np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into ``n_shards`` near-equal parts."""
    order = np.random.default_rng([seed, salt]).permutation(n)
    return np.array_split(order, n_shards)


def _check_shardable(dataset: Dataset, n_shards: int) -> None:
    check_int("n_workers", n_shards, example="n_workers=2")
    for name, split in (("training", dataset.train), ("validation", dataset.validation)):
        if len(split) < n_shards:
            raise ConfigError(
                f"n_workers={n_shards} is more than the {len(split)} {name} examples; "
                f"every worker's shard needs at least one: use n_workers <= {len(split)}"
            )


def shard_splits(dataset: Dataset, n_shards: int, seed: int) -> list[tuple[Split, Split]]:
    """In-memory (train, validation) parts per shard; what ``write_shards`` writes."""
    _check_shardable(dataset, n_shards)
    if not isinstance(dataset.train, Split) or not isinstance(dataset.validation, Split):
        raise DataError("shard_splits needs in-memory splits; open the written shards instead")
    train = shard_indices(len(dataset.train), n_shards, seed, salt=0)
    val = shard_indices(len(dataset.validation), n_shards, seed, salt=1)
    return [
        (_take(dataset.train, t, "train"), _take(dataset.validation, v, "validation"))
        for t, v in zip(train, val, strict=True)
    ]


def _take(split: Split, index: np.ndarray, name: str) -> Split:
    return Split(split.x[index], split.y[index], name=name)


def write_shards(
    dataset: Dataset,
    n_shards: int,
    directory: str | os.PathLike,
    seed: int,
    *,
    digest: Any = None,
    builder: Callable[[Sequence[Callable[[], Any]]], list[Any] | None] | None = None,
) -> list[ShardInfo]:
    """Write one folder per shard under ``directory``; returns their ``ShardInfo``.

    In-memory splits are gathered and written in chunks of ~64 MiB in all (a thread
    per shard, up to the cores), so the driver never holds a copy of a shard;
    streamed splits flow from their source to the shards in chunks of their
    ``memory_bytes`` (see ``_write_streamed``; encoded records also wait in a ~1 MiB
    record batch per shard file being written). Rows of a streamed split keep their
    source order within a shard. ``digest`` (a
    ``hashlib`` object), if given, is updated as ``provenance.data_fingerprint``
    would be from the files, with hashes computed while the files are written.
    """
    _check_shardable(dataset, n_shards)
    root = Path(directory)
    folders = [root / f"shard-{index}" for index in range(n_shards)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    splits = (("train", dataset.train, 0), ("val", dataset.validation, 1))
    parts = {prefix: shard_indices(len(split), n_shards, seed, salt=salt)
             for prefix, split, salt in splits}  # fmt: skip
    if all(isinstance(s, StreamedSplit) and s.source.random_access for _, s, _ in splits):
        built = _build_whole_shards(dataset, parts, folders, builder)
    else:
        built = _write_by_split(dataset, parts, folders)
    for shard in built:
        if digest is not None:
            for name in sorted(shard.hashes):  # the fingerprint's file order
                digest.update(name.encode())
                digest.update(bytes.fromhex(shard.hashes[name]))
    return [shard.info for shard in built]


def _codec(dataset: Dataset) -> Codec | None:
    for split in (dataset.train, dataset.validation):
        if isinstance(split, StreamedSplit) and split.source.codec is not None:
            return split.source.codec
    return None


def _build_whole_shards(
    dataset: Dataset,
    parts: dict[str, list[np.ndarray]],
    folders: list[Path],
    builder: Callable[[Sequence[Callable[[], Any]]], list[Any] | None] | None,
) -> list[BuiltShard]:
    """Sources that read any row: each shard is built whole on its own (its files and
    its ``shard.json``), by ``builder`` where it runs them (an executor's: Ray tasks,
    perhaps on the node that will read the shard), else in a thread per shard here.
    The driver keeps a copy of each ``shard.json`` (what a resume reads)."""
    codec, n_shards = _codec(dataset), len(folders)
    streamed = [(p, s) for p, s in (("train", dataset.train), ("val", dataset.validation))
                if isinstance(s, StreamedSplit)]  # fmt: skip
    n_threads = min(_n_threads(split, n_shards) for _, split in streamed)
    # A few MiB per read is as fast as more; the rest of the bound is headroom for
    # what Python and Arrow keep of freed buffers.
    plans = [(prefix, split.source, min(split.memory_bytes // (2 * n_threads), _TAKE_BYTES))
             for prefix, split in streamed]  # fmt: skip
    builds = [
        functools.partial(
            _build_shard,
            index,
            folder,
            codec,
            [
                (prefix, source, np.sort(parts[prefix][index]), budget)
                for prefix, source, budget in plans
            ],
        )  # fmt: skip
        for index, folder in enumerate(folders)
    ]
    built = builder(builds) if builder is not None else None
    if built is None:
        with ThreadPoolExecutor(n_threads, thread_name_prefix="modelhopper-shard") as pool:
            built = list(pool.map(lambda build: build(), builds))
    for shard, folder in zip(built, folders, strict=True):
        _write_meta(folder, shard.info, codec)
    return built


def _build_shard(
    index: int,
    folder: Path,
    codec: Codec | None,
    plans: list[tuple[str, RecordSource, np.ndarray, int]],
) -> BuiltShard:
    """One whole shard of random-access sources, where this runs."""
    folder.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for prefix, source, rows, budget in plans:
        hashes.update(_build_shard_part(source, rows, folder, prefix, budget))
    counts = {prefix: len(rows) for prefix, _, rows, _ in plans}
    return BuiltShard(_finish_shard(folder, index, counts["train"], counts["val"], codec), hashes)


def _write_by_split(
    dataset: Dataset, parts: dict[str, list[np.ndarray]], folders: list[Path]
) -> list[BuiltShard]:
    """In-memory splits, or sources read in order: the driver writes every shard here."""
    hashes: list[dict[str, str]] = [{} for _ in folders]
    for prefix, split in (("train", dataset.train), ("val", dataset.validation)):
        if isinstance(split, StreamedSplit):
            written = _write_streamed(split, parts[prefix], folders, prefix)
        else:
            written = _write_dense_parts(split, parts[prefix], folders, prefix)
        for shard_hashes, files in zip(hashes, written, strict=True):
            shard_hashes.update(files)
    codec = _codec(dataset)
    return [
        BuiltShard(
            _finish_shard(
                folder, index, len(parts["train"][index]), len(parts["val"][index]), codec
            ),
            hashes[index],
        )  # fmt: skip
        for index, folder in enumerate(folders)
    ]


def _finish_shard(
    folder: Path, index: int, n_train: int, n_val: int, codec: Codec | None
) -> ShardInfo:
    """Write the shard's ``shard.json`` once its files are written; its ShardInfo."""
    info = ShardInfo(index, str(folder), n_train, n_val, 0)
    _write_meta(folder, info, codec)
    shard = open_shard(folder)
    labels = {}
    for prefix, y in (("train", shard.train_y), ("val", shard.val_y)):
        if y.dtype.kind in "iu" and len(y):
            labels[prefix] = [int(y.min()), int(y.max())]
    # data bytes (encoded records as stored)
    info = dataclasses.replace(info, nbytes=shard.nbytes, labels=labels or None)
    _write_meta(folder, info, codec)
    return info


def _write_meta(folder: Path, info: ShardInfo, codec: Codec | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**asdict(info), "codec": codec.to_dict() if codec is not None else None}
    (folder / "shard.json").write_text(json.dumps(meta))


def _write_dense_parts(
    split: Split, parts: list[np.ndarray], folders: list[Path], prefix: str
) -> list[dict[str, str]]:
    """An in-memory split's shard files, a thread per shard up to the cores: the gather,
    hash and write release the GIL (the MLP grid's 188 MB: 0.31 -> 0.21 s on 2 cores),
    and the run's workers start only when the shards are written."""
    n_threads = max(1, min(len(parts), os.cpu_count() or 1))
    chunk_bytes = _CHUNK_BYTES // n_threads  # all threads' chunks: the same bound as one's
    writes = [
        functools.partial(_write_dense_part, split, rows, folder, prefix, chunk_bytes)
        for rows, folder in zip(parts, folders, strict=True)
    ]
    if n_threads == 1:
        return [write() for write in writes]
    with ThreadPoolExecutor(n_threads, thread_name_prefix="modelhopper-shard") as pool:
        return list(pool.map(lambda write: write(), writes))


def _write_dense_part(
    split: Split, rows: np.ndarray, folder: Path, prefix: str, chunk_bytes: int
) -> dict[str, str]:
    hashes = {}
    for what, array in (("x", split.x), ("y", split.y)):
        name = f"{prefix}_{what}.npy"
        hashes[name] = _write_rows(folder / name, array, rows, chunk_bytes)
    return hashes


_CHUNK_BYTES = 64 * 2**20


def _write_rows(file: Path, array: np.ndarray, rows: np.ndarray, chunk_bytes: int) -> str:
    """``np.save(file, array[rows])`` without building ``array[rows]``; returns its SHA-256."""
    writer = _DenseWriter(file, len(rows))
    row_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, len(rows), step):
        writer.append(np.ascontiguousarray(array[rows[start : start + step]]))
    return writer.close()


class _DenseWriter:
    """Writes a ``.npy`` file of ``n_rows`` rows appended in chunks, hashing as it goes.

    The header is written with the first chunk (which gives the row shape and dtype).
    """

    def __init__(self, file: Path, n_rows: int) -> None:
        self.file = file
        self.n_rows = n_rows
        self.written = 0
        self.row_spec: tuple[tuple[int, ...], np.dtype] | None = None
        self._handle: Any = None
        self._digest = hashlib.sha256()

    def append(self, rows: np.ndarray) -> None:
        if self.row_spec is None:
            self.row_spec = (tuple(rows.shape[1:]), rows.dtype)
            header = {"descr": np.lib.format.dtype_to_descr(rows.dtype), "fortran_order": False,
                      "shape": (self.n_rows, *rows.shape[1:])}  # fmt: skip
            head = io.BytesIO()
            np.lib.format.write_array_header_2_0(head, header)
            self._handle = open(self.file, "wb")  # noqa: SIM115 - closed in close()
            self._write(head.getvalue())
        elif (tuple(rows.shape[1:]), rows.dtype) != self.row_spec:
            shape, dtype = self.row_spec
            raise DataError(
                f"examples change shape or type while sharding ({shape} {dtype}, then "
                f"{tuple(rows.shape[1:])} {rows.dtype}); every example of a dataset needs the "
                "same shape and type"
            )
        self._write(np.ascontiguousarray(rows).data)
        self.written += len(rows)

    def _write(self, data: Any) -> None:
        self._digest.update(data)
        self._handle.write(data)

    def close(self) -> str:
        if self._handle is not None:
            self._handle.close()
        if self.written != self.n_rows:
            raise DataError(
                f"{self.file} got {self.written} rows of the {self.n_rows} expected; the source "
                "changed its length while being read"
            )
        return self._digest.hexdigest()


def _write_streamed(
    split: StreamedSplit, parts: list[np.ndarray], folders: list[Path], prefix: str
) -> list[dict[str, str]]:
    """Stream a split's rows into its shards. A source that reads any row builds each
    shard's part on its own, in a thread per shard."""
    source = split.source
    if source.random_access:
        n_threads = _n_threads(split, len(parts))
        budget = min(split.memory_bytes // (2 * n_threads), _TAKE_BYTES)
        builds = [
            functools.partial(_build_shard_part, source, np.sort(rows), folder, prefix, budget)
            for rows, folder in zip(parts, folders, strict=True)
        ]
        with ThreadPoolExecutor(n_threads, thread_name_prefix="modelhopper-shard") as pool:
            return list(pool.map(lambda build: build(), builds))
    writers = [_part_writers(source, folder, prefix, len(rows)) for rows, folder in
               zip(parts, folders, strict=True)]  # fmt: skip
    owner = np.empty(len(source), dtype=np.int32)  # 4 bytes per example: the only O(n) state
    for index, rows in enumerate(parts):
        owner[rows] = index
    start = 0
    for chunk in source.chunks(split.memory_bytes // 2):
        owners = owner[start : start + len(chunk)]
        for index, (x_writer, y_writer) in enumerate(writers):
            _append(x_writer, y_writer, chunk, np.flatnonzero(owners == index))
        start += len(chunk)
    if start != len(source):
        raise DataError(
            f"{source.describe()} gave {start} rows but said it had {len(source)}; the source "
            "changed while being read"
        )
    return [_close(x_writer, y_writer, folder, prefix) for (x_writer, y_writer), folder in
            zip(writers, folders, strict=True)]  # fmt: skip


_TAKE_BYTES = 8 * 2**20


def _n_threads(split: StreamedSplit, n_parts: int) -> int:
    """Threads building shards at once: each holds a read chunk and, for encoded
    records, a writer's batch (``EncodedWriter.flush_bytes``) within ``memory_bytes``."""
    n_threads = min(n_parts, os.cpu_count() or 1)
    if split.encoded:
        n_threads = min(n_threads, split.memory_bytes // (2 * EncodedWriter.flush_bytes))
    return max(1, n_threads)


def _build_shard_part(
    source: RecordSource, rows: np.ndarray, folder: Path, prefix: str, budget: int
) -> dict[str, str]:
    """One shard's rows of a random-access source, read and written chunk by chunk."""
    x_writer, y_writer = _part_writers(source, folder, prefix, len(rows))
    row_bytes = max(1, source.nbytes // max(len(source), 1))
    step = max(1, budget // row_bytes)
    for start in range(0, len(rows), step):
        chunk = source.take(rows[start : start + step])
        _append(x_writer, y_writer, chunk, np.arange(len(chunk)))
    return _close(x_writer, y_writer, folder, prefix)


def _part_writers(source: RecordSource, folder: Path, prefix: str, n_rows: int):
    if source.codec is not None:
        x_writer: Any = EncodedWriter(folder / f"{prefix}_x.arrow")
    else:
        x_writer = _DenseWriter(folder / f"{prefix}_x.npy", n_rows)
    return x_writer, _DenseWriter(folder / f"{prefix}_y.npy", n_rows)


def _append(x_writer: Any, y_writer: _DenseWriter, chunk: RecordChunk, rows: np.ndarray) -> None:
    if not len(rows):
        return
    if isinstance(x_writer, EncodedWriter):
        records, origins = chunk.x, chunk.origins or []
        x_writer.append([records[r] for r in rows.tolist()], [origins[r] for r in rows.tolist()])
    else:
        x_writer.append(np.asarray(chunk.x)[rows])
    y_writer.append(chunk.y[rows])


def _close(x_writer: Any, y_writer: _DenseWriter, folder: Path, prefix: str) -> dict[str, str]:
    x_name = f"{prefix}_x.arrow" if isinstance(x_writer, EncodedWriter) else f"{prefix}_x.npy"
    return {x_name: x_writer.close(), f"{prefix}_y.npy": y_writer.close()}


_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+


def _map_in(array: np.ndarray) -> None:
    """Populate a memory-mapped array's page table (where the platform can: a best effort)."""
    mapped = getattr(array, "_mmap", None)  # np.memmap's mmap object; None for an empty array
    if mapped is not None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, ValueError):  # an older kernel: faults as before
            mapped.madvise(_MADV_POPULATE_READ)


def read_shard_info(path: str | os.PathLike) -> ShardInfo:
    """A shard's ShardInfo from its ``shard.json`` (which also holds how ``x`` is encoded)."""
    meta = json.loads(Path(path).read_text())
    # fields added since (labels) are absent from older runs' shard.json: their defaults
    return ShardInfo(
        **{f.name: meta[f.name] for f in dataclasses.fields(ShardInfo) if f.name in meta}
    )


def open_shard(path: str | os.PathLike, *, map_in: bool = False) -> ShardData:
    """Open a shard's arrays memory-mapped (read-only); encoded examples as an EncodedColumn.

    ``map_in`` (a worker that trains on it): map every page of the arrays now, in one
    call, rather than one page fault at a time in the first pass (measured on Linux:
    a first pass over the MLP grid's shard took ~0.07 s more, ~0.03 s with this)."""
    return ShardData(**_open_arrays(Path(path), _ARRAYS, map_in), path=str(path))


def open_validation_part(path: str | os.PathLike) -> ShardData:
    """Open only a shard's validation arrays (shared validation: a worker evaluates a
    shard it does not hold); its training part is empty. ``path`` may be the whole
    shard's folder or one holding only ``validation_files``."""
    arrays = _open_arrays(Path(path), ("val_x", "val_y"), map_in=False)
    val_x, val_y = arrays["val_x"], arrays["val_y"]
    empty_x = np.empty((0, *val_x.shape[1:]), dtype=getattr(val_x, "dtype", np.uint8))
    return ShardData(empty_x, val_y[:0], val_x, val_y, path=str(path))


def validation_file_names(path: str | os.PathLike) -> list[str]:
    """The names of the files ``open_validation_part`` reads in a shard's folder:
    ``shard.json`` and the validation arrays."""
    folder = Path(path)
    return ["shard.json", *(p.name for p in sorted(folder.glob("val_*")) if p.is_file())]


def validation_files(path: str | os.PathLike) -> dict[str, bytes]:
    """The files ``open_validation_part`` reads, as bytes (a copy for a node that
    cannot read the shard's folder)."""
    folder = Path(path)
    try:
        return {name: (folder / name).read_bytes() for name in validation_file_names(folder)}
    except OSError as e:
        raise DataError(f"cannot read the validation part of shard {str(folder)!r}: {e}") from e


def _open_arrays(folder: Path, names: Sequence[str], map_in: bool) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "shard.json").read_text())
        codec = Codec(**meta["codec"]) if meta.get("codec") else None
        arrays: dict[str, Any] = {}
        for name in names:
            encoded = folder / f"{name}.arrow"
            if codec is not None and encoded.exists():
                arrays[name] = EncodedColumn(encoded, codec)
            else:
                arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
                if map_in:
                    _map_in(arrays[name])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            f"cannot open shard {str(folder)!r}: {e}; the run directory may have been "
            "moved or cleaned while the run was going on"
        ) from e
    return arrays
