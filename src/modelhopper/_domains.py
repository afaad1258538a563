"""Domains of a search space: frozen dataclasses that sample, expand and admit values.

``modelhopper.space`` re-exports the public names; this module also holds the helpers
that keep points plain (``_freeze``/``_thaw``) and the argument checks whose messages
name the offending parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Self

import numpy as np

from modelhopper.errors import SpaceError

_PLAIN_HINT = "None, bool, int, float, str, or a list/tuple/dict of them"
_FACTORY_NAMES = "choice, grid, uniform, loguniform, randint, quniform"
_N_SHOWN = 10  # values listed in a message before it says "..."


# ---------------------------------------------------------------- plain values


class _NotPlainError(Exception):
    """Internal: a value is not plain; ``obj`` is the offending (possibly inner) object."""

    def __init__(self, obj: Any) -> None:
        super().__init__(obj)
        self.obj = obj


def _freeze(value: Any) -> Any:
    """Plain copy of value: numpy scalars unwrapped, sequences made tuples (hashable, JSON-safe)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return None
    for plain in (bool, int, float, str):  # bool first: it is an int subclass
        if isinstance(value, plain):
            return plain(value)  # an IntEnum or str subclass becomes the plain type
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {str(k): _freeze(v) for k, v in value.items()}
    raise _NotPlainError(value)


def _thaw(value: Any) -> Any:
    """JSON shape of a frozen value: tuples become lists."""
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality of frozen values that keeps True apart from 1 (Python says True == 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, dict)) or isinstance(b, (tuple, dict)):
        return False
    return bool(a == b)


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _show_values(values: tuple[Any, ...]) -> str:
    shown = [_thaw(v) for v in values[:_N_SHOWN]]
    if len(values) <= _N_SHOWN:
        return repr(shown)
    return f"{repr(shown)[:-1]}, ... ({len(values)} in all)]"


def _label(kind: str, name: str | None) -> str:
    """How messages name a domain: ``loguniform('lr')`` in a Space, ``loguniform`` standalone."""
    return kind if name is None else f"{kind}({name!r})"


# ---------------------------------------------------------------- argument checks


def _checked_values(values: Any, kind: str, name: str | None) -> tuple[Any, ...]:
    label = _label(kind, name)
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, range):
        values = list(values)
    if not isinstance(values, (list, tuple)):  # a str is a sequence too, but never meant as one
        raise SpaceError(
            f"{label} needs a list or tuple of values, got {_show(values)}; "
            f"give a list such as {kind}([32, 64])"
        )
    if len(values) == 0:
        raise SpaceError(
            f"{label} needs at least one value, got {values!r}; "
            f"give a list such as {kind}([32, 64])"
        )
    try:
        return tuple(_freeze(v) for v in values)
    except _NotPlainError as e:
        raise SpaceError(
            f"{label} values must be plain ({_PLAIN_HINT}) so the space can be stored, "
            f"got {_show(e.obj)}; use names such as 'relu' and build the objects in "
            "make_estimator"
        ) from None


def _finite(value: Any, arg: str, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpaceError(
            f"{arg} must be a finite number for {label}, got {arg}={_show(value)}; "
            "pass a float or an int"
        )
    if not math.isfinite(value):
        raise SpaceError(
            f"{arg} must be a finite number for {label}, got {arg}={value!r}; pass a finite bound"
        )
    return float(value)


def _whole(value: Any, arg: str, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fix = (
            f"pass {arg}={int(value)}"
            if isinstance(value, float) and value.is_integer()
            else "pass a whole number"
        )
        raise SpaceError(f"{arg} must be an int for {label}, got {arg}={_show(value)}; {fix}")
    return int(value)


def _ordered(low: float, high: float, label: str) -> None:
    if not low <= high:
        raise SpaceError(
            f"low <= high must hold for {label}, got low={low!r}, high={high!r}; swap them"
        )


def _admit_real(value: Any, low: float, high: float, label: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpaceError(
            f"params[{name!r}] must be a number for {label}, got {_show(value)}; "
            f"pass a float in [{low!r}, {high!r}]"
        )
    if not low <= float(value) <= high:  # NaN fails here too
        raise SpaceError(
            f"params[{name!r}]={value!r} is outside [{low!r}, {high!r}] of {label}; "
            "pass a value in that range or widen the space"
        )
    return float(value)


def _times(k: int, q: float) -> float:
    """k * q without binary noise: 3 * 0.1 is 0.3, not 0.30000000000000004."""
    return float(Decimal(k) * Decimal(repr(q)))


# ---------------------------------------------------------------- domains


class BaseDomain(ABC):
    """The admissible values of one parameter; a Space gives it its name."""

    kind: ClassVar[str]

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """One value drawn with rng, as a plain Python object."""

    @abstractmethod
    def _checked(self, name: str | None) -> Self:
        """This domain with normalised fields; raises SpaceError naming ``name``."""

    @abstractmethod
    def _admit(self, value: Any, name: str) -> Any:
        """value as a plain Python object if the domain holds it; raises SpaceError if not."""

    def _fields(self) -> dict[str, Any]:
        """JSON-friendly fields for Space.to_dict."""
        return {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class _ValuesDomain(BaseDomain):
    values: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        return copy.deepcopy(self.values[int(rng.integers(len(self.values)))])

    def _checked(self, name: str | None) -> Self:
        return type(self)(_checked_values(self.values, self.kind, name))

    def _admit(self, value: Any, name: str) -> Any:
        try:
            frozen = _freeze(value)
        except _NotPlainError:
            frozen = object()  # matches no value, so the message below applies
        for v in self.values:
            if _same(v, frozen):
                return copy.deepcopy(v)
        raise SpaceError(
            f"params[{name!r}]={value!r} is not one of the values of {_label(self.kind, name)}: "
            f"{_show_values(self.values)}; pick one of them or add it to the space"
        )


@dataclass(frozen=True)
class Choice(_ValuesDomain):
    """One of ``values``: random search picks uniformly, grid search tries each."""

    kind: ClassVar[str] = "choice"


@dataclass(frozen=True)
class Grid(_ValuesDomain):
    """One of ``values``, meant for grid search (tries each); random search picks uniformly."""

    kind: ClassVar[str] = "grid"


@dataclass(frozen=True)
class Uniform(BaseDomain):
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float
    kind: ClassVar[str] = "uniform"

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def _checked(self, name: str | None) -> Self:
        label = _label(self.kind, name)
        low, high = _finite(self.low, "low", label), _finite(self.high, "high", label)
        _ordered(low, high, label)
        return type(self)(low, high)

    def _admit(self, value: Any, name: str) -> float:
        return _admit_real(value, self.low, self.high, _label(self.kind, name), name)


@dataclass(frozen=True)
class LogUniform(BaseDomain):
    """A float in [low, high] whose log is uniform: as likely in [1e-4, 1e-3] as in [1e-3, 1e-2]."""

    low: float
    high: float
    kind: ClassVar[str] = "loguniform"

    def sample(self, rng: np.random.Generator) -> float:
        value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return min(max(value, self.low), self.high)  # exp(log(x)) can miss x by an ulp

    def _checked(self, name: str | None) -> Self:
        label = _label(self.kind, name)
        low, high = _finite(self.low, "low", label), _finite(self.high, "high", label)
        if not low > 0:
            raise SpaceError(
                f"low > 0 must hold for {label}, got low={low!r}, high={high!r}; "
                f"use uniform({low!r}, {high!r}) for a range that includes 0, "
                "or give a positive low"
            )
        _ordered(low, high, label)
        return type(self)(low, high)

    def _admit(self, value: Any, name: str) -> float:
        return _admit_real(value, self.low, self.high, _label(self.kind, name), name)


@dataclass(frozen=True)
class RandInt(BaseDomain):
    """An int drawn uniformly from [low, high); high is exclusive, as in numpy ``integers``."""

    low: int
    high: int
    kind: ClassVar[str] = "randint"

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high))

    def _checked(self, name: str | None) -> Self:
        label = _label(self.kind, name)
        low, high = _whole(self.low, "low", label), _whole(self.high, "high", label)
        if not low < high:
            fix = f"use high={low + 1} to draw only {low}" if low == high else "swap them"
            raise SpaceError(
                f"low < high must hold for {label} (high is exclusive), "
                f"got low={low!r}, high={high!r}; {fix}"
            )
        return type(self)(low, high)

    def _admit(self, value: Any, name: str) -> int:
        label = _label(self.kind, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SpaceError(
                f"params[{name!r}] must be an int for {label}, got {_show(value)}; "
                f"pass an int in [{self.low}, {self.high})"
            )
        if not self.low <= int(value) < self.high:
            raise SpaceError(
                f"params[{name!r}]={value!r} is outside [{self.low}, {self.high}) of {label} "
                "(high is exclusive); pass a value in that range or widen the space"
            )
        return int(value)


@dataclass(frozen=True)
class QUniform(BaseDomain):
    """A uniform float rounded to a multiple of q, then clipped into [low, high]."""

    low: float
    high: float
    q: float
    kind: ClassVar[str] = "quniform"

    def sample(self, rng: np.random.Generator) -> float:
        value = _times(round(float(rng.uniform(self.low, self.high)) / self.q), self.q)
        return min(max(value, self.low), self.high)

    def _checked(self, name: str | None) -> Self:
        label = _label(self.kind, name)
        low, high = _finite(self.low, "low", label), _finite(self.high, "high", label)
        q = _finite(self.q, "q", label)
        _ordered(low, high, label)
        if not q > 0:
            raise SpaceError(
                f"q > 0 must hold for {label}, got q={q!r}; pass the step size, such as q=0.1"
            )
        return type(self)(low, high, q)

    def _admit(self, value: Any, name: str) -> float:
        label = _label(self.kind, name)
        v = _admit_real(value, self.low, self.high, label, name)
        nearest = _times(round(v / self.q), self.q)
        on_grid = math.isclose(v, nearest, rel_tol=1e-9, abs_tol=1e-12)
        if v not in (self.low, self.high) and not on_grid:
            raise SpaceError(
                f"params[{name!r}]={value!r} is not a multiple of q={self.q!r} for {label}; "
                f"round it, e.g. to {nearest!r}"
            )
        return v


def choice(values: Sequence[Any]) -> Choice:
    """One of ``values`` (plain values: None, bool, int, float, str, lists/tuples/dicts)."""
    return Choice(_checked_values(values, Choice.kind, None))


def grid(values: Sequence[Any]) -> Grid:
    """One of ``values``, each tried by grid search; sampled uniformly by random search."""
    return Grid(_checked_values(values, Grid.kind, None))


def uniform(low: float, high: float) -> Uniform:
    """A float uniform in [low, high]."""
    return Uniform(low, high)._checked(None)


def loguniform(low: float, high: float) -> LogUniform:
    """A float in [low, high], 0 < low, uniform on a log scale (learning rates, weight decay)."""
    return LogUniform(low, high)._checked(None)


def randint(low: int, high: int) -> RandInt:
    """An int uniform in [low, high); high is exclusive."""
    return RandInt(low, high)._checked(None)


def quniform(low: float, high: float, q: float) -> QUniform:
    """A float uniform in [low, high], rounded to a multiple of q and clipped into [low, high]."""
    return QUniform(low, high, q)._checked(None)


_DOMAIN_TYPES: dict[str, type[BaseDomain]] = {
    cls.kind: cls for cls in (Choice, Grid, Uniform, LogUniform, RandInt, QUniform)
}
