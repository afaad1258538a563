"""Representation: a named, parameterised, deterministic transform of raw examples.

An MST chooses its representation like any other parameter: the space holds plain
values (a name, a window length, a layer index) and ``make_estimator`` builds the
``Representation`` they name and hands it to the ``Estimator``. The worker that owns
a shard applies it there; MSTs whose representations have the same fingerprint share
one materialised copy of the transformed shard (see ``FeatureStore``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from modelhopper._checks import check_int
from modelhopper.errors import ConfigError, MSTFailedError

__all__ = ["Representation"]

_PLAIN = (type(None), bool, int, float, str)


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where} has a non-string key {key!r}; use string keys")
            _check_plain(item, where)
    elif not isinstance(value, _PLAIN):
        raise ConfigError(
            f"{where} must hold plain values (None, bool, int, float, str, lists and dicts "
            f"of them) so it can be fingerprinted, got {value!r} ({type(value).__name__}); "
            "pass objects through the closure of fn and name them in params or digest"
        )


class Representation:
    """A deterministic, per-example transform of a shard's raw ``x``.

    ``fn(x, **params)`` takes a batch of raw examples as a tensor and returns a
    tensor whose row ``i`` depends on row ``i`` of ``x`` alone (so applying it in
    chunks or per training batch gives the same rows). It runs under
    ``torch.no_grad()`` and must not draw random numbers.

    The fingerprint is a hash of ``name``, ``version``, ``params`` and ``digest``:
    two MSTs share a materialised copy exactly when their fingerprints agree. Bump
    ``version`` when ``fn``'s code changes; set ``digest`` (a string, or a function
    called once on the worker that returns one) to identify state ``fn`` reads,
    such as pretrained weights. ``batch_size`` is the chunk size for materialising.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[..., torch.Tensor],
        *,
        params: Mapping[str, Any] | None = None,
        version: str = "1",
        digest: str | Callable[[], str] | None = None,
        batch_size: int = 256,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Representation name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise ConfigError(f"Representation {name!r}: fn must be callable, got {fn!r}")
        params = dict(params or {})
        _check_plain(params, f"Representation {name!r} params")
        check_int(f"Representation {name!r}: batch_size", batch_size)
        if digest is not None and not (isinstance(digest, str) or callable(digest)):
            raise ConfigError(
                f"Representation {name!r}: digest must be a string or a function returning "
                f"one, got {digest!r}"
            )
        self.name = name
        self.fn = fn
        self.params = params
        self.version = str(version)
        self.batch_size = batch_size
        self._digest = digest
        self._fingerprint: str | None = None

    @property
    def digest(self) -> str:
        if callable(self._digest):
            self._digest = str(self._digest())
        return self._digest or ""

    @property
    def fingerprint(self) -> str:
        """Hex digest naming this transform: equal fingerprints, equal outputs."""
        if self._fingerprint is None:
            key = {"name": self.name, "version": self.version, "params": self.params}
            key["digest"] = self.digest
            text = json.dumps(key, sort_keys=True, separators=(",", ":"))
            self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:32]
        return self._fingerprint

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Transform one batch (a tensor of raw examples)."""
        with torch.no_grad():
            out = self.fn(x, **self.params)
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or len(out) != len(x):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MSTFailedError(
                f"Representation {self.name!r} must return a tensor with one row per example "
                f"({len(x)} here), got {shape}; fn must map a batch to a batch"
            )
        return out.detach()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform a whole array in chunks of ``batch_size`` rows (what materialising does)."""
        chunks = []
        for start in range(0, len(x), self.batch_size):
            part = np.asarray(x[start : start + self.batch_size])
            if not part.flags.writeable:
                part = np.array(part)
            chunks.append(self(torch.from_numpy(part)).numpy())
        if not chunks:
            return np.zeros((0,), dtype=np.float32)
        return np.concatenate(chunks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Representation) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"Representation({self.name!r}{', ' if shown else ''}{shown})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_digest"] = self.digest  # resolved once, so workers agree without recomputing
        return state
