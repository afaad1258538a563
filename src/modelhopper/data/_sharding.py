"""Sharding: shuffle once with the seed, split into one shard per worker, write each once.

A shard is a folder of ``.npy`` files (train_x, train_y, val_x, val_y) that a
worker opens memory-mapped; no other process ever reads it during the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

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


def write_shards(dataset: Dataset, n_shards: int, directory: str | os.PathLike, seed: int):
    """Write one folder per shard under ``directory``; returns their ``ShardInfo``."""
    root = Path(directory)
    infos = []
    for index, (train, val) in enumerate(shard_splits(dataset, n_shards, seed)):
        path = root / f"shard-{index}"
        path.mkdir(parents=True, exist_ok=True)
        arrays = {"train_x": train.x, "train_y": train.y, "val_x": val.x, "val_y": val.y}
        for name, array in arrays.items():
            np.save(path / f"{name}.npy", array)
        info = ShardInfo(
            index, str(path), len(train), len(val), sum(a.nbytes for a in arrays.values())
        )
        (path / "shard.json").write_text(json.dumps(asdict(info)))
        infos.append(info)
    return infos


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
