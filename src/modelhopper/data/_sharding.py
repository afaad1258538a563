"""Sharding: shuffle once with the seed, split into one shard per worker, write each once.

A shard is a folder of ``.npy`` files (train_x, train_y, val_x, val_y) that a
worker opens memory-mapped; no other process ever reads it during the run.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelhopper.data._dataset import Dataset, Split
from modelhopper.errors import ConfigError, DataError

__all__ = ["ShardInfo", "ShardData", "shard_indices", "shard_splits", "write_shards", "open_shard"]

_ARRAYS = ("train_x", "train_y", "val_x", "val_y")


@dataclass(frozen=True)
class ShardInfo:
    index: int
    path: str
    n_train: int
    n_val: int
    nbytes: int


@dataclass(frozen=True)
class ShardData:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
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
    if isinstance(n_shards, bool) or not isinstance(n_shards, int) or n_shards < 1:
        raise ConfigError(f"n_workers must be an integer >= 1, got {n_shards!r}")
    for name, split in (("training", dataset.train), ("validation", dataset.validation)):
        if len(split) < n_shards:
            raise ConfigError(
                f"n_workers={n_shards} is more than the {len(split)} {name} examples; "
                f"every worker's shard needs at least one: use n_workers <= {len(split)}"
            )


def shard_splits(dataset: Dataset, n_shards: int, seed: int) -> list[tuple[Split, Split]]:
    """In-memory (train, validation) parts per shard; what ``write_shards`` writes."""
    _check_shardable(dataset, n_shards)
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
) -> list[ShardInfo]:
    """Write one folder per shard under ``directory``; returns their ``ShardInfo``.

    Rows are gathered and written in chunks of ~64 MiB, so the driver never holds
    a copy of a shard. ``digest`` (a ``hashlib`` object), if given, is updated as
    ``provenance.data_fingerprint`` would be from the files, in the same pass.
    """
    _check_shardable(dataset, n_shards)
    train = shard_indices(len(dataset.train), n_shards, seed, salt=0)
    val = shard_indices(len(dataset.validation), n_shards, seed, salt=1)
    root = Path(directory)
    infos = []
    for index, (t, v) in enumerate(zip(train, val, strict=True)):
        path = root / f"shard-{index}"
        path.mkdir(parents=True, exist_ok=True)
        parts = {
            "train_x": (dataset.train.x, t), "train_y": (dataset.train.y, t),
            "val_x": (dataset.validation.x, v), "val_y": (dataset.validation.y, v),
        }  # fmt: skip
        nbytes = sum(
            _write_rows(path / f"{name}.npy", array, rows, digest)
            for name, (array, rows) in sorted(parts.items())  # the fingerprint's file order
        )
        info = ShardInfo(index, str(path), len(t), len(v), nbytes)
        (path / "shard.json").write_text(json.dumps(asdict(info)))
        infos.append(info)
    return infos


_CHUNK_BYTES = 64 * 2**20


def _write_rows(file: Path, array: np.ndarray, rows: np.ndarray, digest: Any) -> int:
    """``np.save(file, array[rows])`` without building ``array[rows]``; returns data bytes."""
    shape = (len(rows), *array.shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
              "shape": shape}  # fmt: skip
    row_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_BYTES // row_bytes)
    head = io.BytesIO()
    np.lib.format.write_array_header_2_0(head, header)
    if digest is not None:
        digest.update(file.name.encode())
        digest.update(head.getvalue())
    with open(file, "wb") as f:
        f.write(head.getvalue())
        for start in range(0, len(rows), step):
            chunk = np.ascontiguousarray(array[rows[start : start + step]])
            f.write(chunk.data)
            if digest is not None:
                digest.update(chunk.data)
    return row_bytes * len(rows)


def open_shard(path: str | os.PathLike) -> ShardData:
    """Open a shard's arrays memory-mapped (read-only)."""
    folder = Path(path)
    try:
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot open shard {str(folder)!r}: {e}; the run directory may have been "
            "moved or cleaned while the run was going on"
        ) from e
    return ShardData(**arrays, path=str(folder))
