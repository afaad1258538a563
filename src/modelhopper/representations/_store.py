"""FeatureStore: one worker's materialised representations of its shard, under a budget.

Materialising a representation runs it once over the shard and keeps the result;
every later sub-epoch of every MST that uses it reads the result instead of
re-running the transform (for a frozen pretrained trunk, the expensive forward
pass). Entries are keyed by ``fingerprint(shard x) + fingerprint(representation)``,
so they are reused across epochs and MSTs and rebuilt only when either changes.
Disk entries are files named by that key, so a replaced worker finds them again.

Which representations to keep: the Nautilus trade-off
-----------------------------------------------------
Keeping an entry costs its bytes; it saves its build time on every reuse. The
store does not know the future workload, so it values an entry by the seconds it
saved per byte so far, counting the build as one use:
``value = build_seconds * (1 + hits) / nbytes``. A new representation is first
built for one chunk, which measures its bytes per example and seconds per
example, so its size and cost for the whole shard are known before committing.
Then:

1. Memory first, if the whole entry fits in the memory budget that is left.
2. Otherwise disk, if it fits in the disk budget that is left.
3. Otherwise, in memory then on disk, evict entries worth less than the
   newcomer (lowest value first) until it fits; entries worth more are never
   evicted for it.
4. If it still does not fit, it is not materialised: the representation is
   applied to every training batch as it is drawn ("streamed"), which is the
   same computation as re-running a frozen trunk every sub-epoch.

Cheap, large outputs (early convolution layers) thus lose to expensive, small
ones (late transformer layers) when space is short, which is the outcome
Nautilus's planner aims for, without needing the workload in advance.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelhopper.data._encoded import EncodedColumn
from modelhopper.data._sharding import ShardData
from modelhopper.errors import ConfigError
from modelhopper.representations._representation import Representation

__all__ = ["MaterialiseBudget", "Tier", "Features", "FeatureStore", "Lookup", "shard_fingerprint"]

_MiB = 1 << 20


@dataclass(frozen=True)
class MaterialiseBudget:
    """Bytes one worker may spend on materialised representations, in memory and on disk."""

    memory_bytes: int = 512 * _MiB
    disk_bytes: int = 4096 * _MiB

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "disk_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"MaterialiseBudget.{name} must be an int >= 0 (bytes), got {value!r}; "
                    "use 0 to disable that tier"
                )


class Tier(enum.StrEnum):
    MEMORY = "memory"
    DISK = "disk"
    STREAM = "stream"  # not materialised: applied to each batch as it is drawn


@dataclass
class Features:
    """A representation of one shard: its transformed train and validation ``x``."""

    key: str
    train_x: np.ndarray
    val_x: np.ndarray
    tier: Tier
    build_seconds: float
    hits: int = 0

    @property
    def nbytes(self) -> int:
        return int(self.train_x.nbytes + self.val_x.nbytes)

    @property
    def value(self) -> float:
        """Seconds saved per byte so far (the build counts as one use)."""
        return self.build_seconds * (1 + self.hits) / max(self.nbytes, 1)


@dataclass
class Lookup:
    """What one request found: the features (None when streamed) and how."""

    features: Features | None
    tier: Tier
    built: bool
    seconds: float
    nbytes: int
    evicted: list[str] = field(default_factory=list)


def shard_fingerprint(shard: ShardData) -> str:
    """Hash of the shard's raw ``x`` (shape, dtype and bytes of train and validation)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (_dense(shard.train_x), _dense(shard.val_x)):
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        for start in range(0, len(array), 4096):
            digest.update(np.ascontiguousarray(array[start : start + 4096]).tobytes())
    return digest.hexdigest()


def _dense(x: np.ndarray | EncodedColumn) -> np.ndarray:
    # Encoded shards (images decoded per batch) never reach the store: the worker applies
    # their representation to each decoded batch instead.
    if isinstance(x, EncodedColumn):
        raise TypeError("representations of encoded shards are applied per batch, not stored")
    return x


class FeatureStore:
    """Materialised representations of one shard, within ``budget`` (see module docstring)."""

    def __init__(
        self,
        shard: ShardData,
        budget: MaterialiseBudget | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self.shard = shard
        self.budget = budget or MaterialiseBudget()
        self._directory = Path(directory) if directory is not None else None
        self._entries: dict[str, Features] = {}
        self._shard_key: str | None = None
        self._estimates: dict[str, tuple[int, float]] = {}  # key -> (bytes, value) of probes
        self.built_bytes = 0  # bytes materialised over this store's life (rebuilds count again)

    # ---------------------------------------------------------------- queries
    def used(self, tier: Tier) -> int:
        return sum(e.nbytes for e in self._entries.values() if e.tier is tier)

    def free(self, tier: Tier) -> int:
        limit = self.budget.memory_bytes if tier is Tier.MEMORY else self.budget.disk_bytes
        return limit - self.used(tier)

    @property
    def entries(self) -> dict[str, Features]:
        return dict(self._entries)

    def key(self, representation: Representation) -> str:
        if self._shard_key is None:
            self._shard_key = shard_fingerprint(self.shard)
        return f"{self._shard_key}-{representation.fingerprint}"

    # ---------------------------------------------------------------- the one entry point
    def get(self, representation: Representation) -> Lookup:
        """The shard's features under ``representation``: reused, loaded, built, or streamed."""
        started = time.perf_counter()
        key = self.key(representation)
        found = self._entries.get(key) or self._from_disk(key)
        if found is not None:
            found.hits += 1
            return Lookup(found, found.tier, False, time.perf_counter() - started, found.nbytes)
        return self._build(key, representation, started)

    def _build(self, key: str, representation: Representation, started: float) -> Lookup:
        train, val = _dense(self.shard.train_x), _dense(self.shard.val_x)
        probe_n = min(len(train), representation.batch_size)
        probe = None
        if key not in self._estimates:  # a streamed representation is probed once only
            probe = representation.apply(train[:probe_n])
            scale = (len(train) + len(val)) / max(probe_n, 1)
            need = int(probe.nbytes * scale)
            value = (time.perf_counter() - started) * scale / max(need, 1)
            self._estimates[key] = (need, value)
        tier, evicted = self._place(*self._estimates[key])
        if tier is Tier.STREAM:
            return Lookup(None, tier, False, time.perf_counter() - started, 0, evicted)
        if probe is None:
            probe = representation.apply(train[:probe_n])
        rest = representation.apply(train[probe_n:])
        train_x = np.concatenate([probe, rest]) if len(rest) else probe
        val_x = representation.apply(val)
        seconds = time.perf_counter() - started
        if tier is Tier.DISK:
            train_x, val_x = self._write(key, train_x, val_x, seconds)
        features = Features(key, train_x, val_x, tier, seconds)
        self._entries[key] = features
        self.built_bytes += features.nbytes
        return Lookup(features, tier, True, seconds, features.nbytes, evicted)

    # ---------------------------------------------------------------- the budget rule
    def _place(self, need: int, value: float) -> tuple[Tier, list[str]]:
        for tier in (Tier.MEMORY, Tier.DISK):
            if need <= self.free(tier):
                return tier, []
        for tier in (Tier.MEMORY, Tier.DISK):
            victims = self._victims(tier, need, value)
            if victims is not None:
                for key in victims:
                    self._evict(key)
                return tier, victims
        return Tier.STREAM, []

    def _victims(self, tier: Tier, need: int, value: float) -> list[str] | None:
        """Cheapest entries of ``tier`` worth less than ``value`` that free ``need`` bytes."""
        freed, victims = self.free(tier), []
        candidates = sorted(
            (e for e in self._entries.values() if e.tier is tier and e.value < value),
            key=lambda e: e.value,
        )
        for entry in candidates:
            if freed >= need:
                break
            victims.append(entry.key)
            freed += entry.nbytes
        return victims if freed >= need else None

    def _evict(self, key: str) -> None:
        entry = self._entries.pop(key)
        if entry.tier is Tier.DISK:
            for path in (*self._paths(key), self._cost_path(key)):
                path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- disk tier
    def directory(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="modelhopper-features-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        return self._directory

    def _paths(self, key: str) -> tuple[Path, Path]:
        root = self.directory()
        return root / f"{key}.train.npy", root / f"{key}.val.npy"

    def _cost_path(self, key: str) -> Path:
        return self.directory() / f"{key}.json"

    def _write(self, key: str, train_x: np.ndarray, val_x: np.ndarray, seconds: float):
        # The build time travels with the files, so a replaced worker values them alike.
        self._cost_path(key).write_text(json.dumps({"build_seconds": seconds}))
        opened = []
        for path, array in zip(self._paths(key), (train_x, val_x), strict=True):
            partial = path.with_suffix(".partial.npy")
            np.save(partial, array)
            os.replace(partial, path)  # atomic: a crash never leaves a half-written entry
            opened.append(np.load(path, mmap_mode="r"))
        return opened[0], opened[1]

    def _from_disk(self, key: str) -> Features | None:
        """An entry an earlier worker process on this shard wrote, if it fits the budget."""
        if self._directory is None or self.budget.disk_bytes == 0:
            return None
        train_path, val_path = self._paths(key)
        if not (train_path.exists() and val_path.exists()):
            return None
        size = train_path.stat().st_size + val_path.stat().st_size
        if size > self.free(Tier.DISK):
            return None
        train_x, val_x = (np.load(p, mmap_mode="r") for p in (train_path, val_path))
        seconds = _read_cost(self._cost_path(key))
        features = Features(key, train_x, val_x, Tier.DISK, build_seconds=seconds)
        self._entries[key] = features
        return features


def _read_cost(path: Path) -> float:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return float(json.loads(path.read_text())["build_seconds"])
    return 0.0
