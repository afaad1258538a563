"""Search spaces: parameter names mapped to domains that Procedures sample or expand into MSTs.

A domain is a frozen dataclass (``Choice``, ``Grid``, ``Uniform``, ``LogUniform``, ``RandInt``,
``QUniform``) made by a factory (``choice([32, 64])``, ``loguniform(1e-4, 1e-1)``, ...); any
other plain value in a space is a constant. Factories check their arguments at once, but only
``Space`` knows each parameter's name, so it checks every domain again and names it in the
message. Points (``sample``, ``grid_points``, ``validate_point``) hold plain Python values only,
so they compare cleanly and survive a JSON round trip through the Store unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Self

import numpy as np

from modelhopper.errors import SpaceError

__all__ = [
    "BaseDomain",
    "Choice",
    "Grid",
    "Uniform",
    "LogUniform",
    "RandInt",
    "QUniform",
    "choice",
    "grid",
    "uniform",
    "loguniform",
    "randint",
    "quniform",
    "Space",
]

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


# ---------------------------------------------------------------- space


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SpaceError(
            f"parameter names must be non-empty strings, got {_show(name)}; "
            "name each parameter, e.g. {'lr': loguniform(1e-4, 1e-1)}"
        )
    return name


def _unknown_domain(value: Any, name: str, detail: str = "") -> SpaceError:
    return SpaceError(
        f"unknown domain type {type(value).__name__} for {name!r}{detail}; use one of "
        f"{_FACTORY_NAMES}, or a plain constant ({_PLAIN_HINT})"
    )


def _checked_entry(name: str, value: Any) -> Any:
    """A checked domain, or value frozen as a constant; anything else is an unknown domain."""
    if isinstance(value, BaseDomain):
        return value._checked(name)
    if isinstance(value, Mapping) and "grid_search" in value:
        # Ray Tune's syntax: taking it for a constant dict would silently skip the search
        raise _unknown_domain(value, name, " (Ray Tune's grid_search is grid([...]) here)")
    try:
        return _freeze(value)
    except _NotPlainError as e:
        inner = "" if e.obj is value else f" (it holds a {type(e.obj).__name__})"
        raise _unknown_domain(value, name, inner) from None


def _check_grid_size(axes: Mapping[str, tuple[Any, ...]], n_grid_max: int) -> None:
    if isinstance(n_grid_max, bool) or not isinstance(n_grid_max, int) or n_grid_max < 1:
        raise SpaceError(
            f"n_grid_max must be an int >= 1, got {_show(n_grid_max)}; pass e.g. n_grid_max=1000"
        )
    size = math.prod(len(values) for values in axes.values())
    if size > n_grid_max:
        sizes = " x ".join(f"{len(values)} ({name!r})" for name, values in axes.items())
        raise SpaceError(
            f"the grid has {size:,} points ({sizes}), more than n_grid_max={n_grid_max:,}; "
            "shorten the grid/choice lists, raise n_grid_max, or use RandomSearch"
        )


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise SpaceError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "pass numpy.random.default_rng(seed)"
        )


class Space:
    """Parameter names mapped to domains or constants, in insertion order.

    ``Space({"lr": loguniform(1e-4, 1e-1), "hidden": choice([32, 64]), "batch_size": 32})``
    """

    def __init__(self, domains: Mapping[str, Any] | Space) -> None:
        if isinstance(domains, Space):
            self._domains: dict[str, Any] = dict(domains._domains)
            return
        if not isinstance(domains, Mapping):
            raise SpaceError(
                f"a Space is built from a mapping of names to domains, got {_show(domains)}; "
                "pass a dict such as {'lr': loguniform(1e-4, 1e-1)}"
            )
        self._domains = {}
        for name, value in domains.items():
            _checked_name(name)  # before the value, whose message quotes the name
            self._domains[name] = _checked_entry(name, value)

    @classmethod
    def from_any(cls, obj: Mapping[str, Any] | Space) -> Space:
        """obj itself if it is a Space (spaces are immutable), else Space(obj)."""
        return obj if isinstance(obj, Space) else cls(obj)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._domains)

    @property
    def domains(self) -> Mapping[str, Any]:
        """Read-only view: name -> BaseDomain, or the constant's value."""
        return MappingProxyType(self._domains)

    def __contains__(self, name: object) -> bool:
        return name in self._domains

    def __len__(self) -> int:
        return len(self._domains)

    def __iter__(self) -> Iterator[str]:
        return iter(self._domains)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Space):
            return NotImplemented
        return list(self._domains.items()) == list(other._domains.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Space({self._domains!r})"

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One random point; draws from rng in name order, so a Generator state fixes it."""
        _check_rng(rng)
        return {
            name: d.sample(rng) if isinstance(d, BaseDomain) else copy.deepcopy(d)
            for name, d in self._domains.items()
        }

    def grid_points(self, *, n_grid_max: int = 100_000) -> list[dict[str, Any]]:
        """Every combination of Grid and Choice values, last name varying fastest."""
        self._check_expandable()
        axes = {n: d.values for n, d in self._domains.items() if isinstance(d, _ValuesDomain)}
        _check_grid_size(axes, n_grid_max)
        points = []
        for combo in itertools.product(*axes.values()):
            chosen = dict(zip(axes, combo, strict=True))
            points.append({n: copy.deepcopy(chosen.get(n, d)) for n, d in self._domains.items()})
        return points

    def _check_expandable(self) -> None:
        ranges = [
            (n, d)
            for n, d in self._domains.items()
            if isinstance(d, BaseDomain) and not isinstance(d, _ValuesDomain)
        ]
        if ranges:
            labels = ", ".join(_label(d.kind, n) for n, d in ranges)
            names = ", ".join(repr(n) for n, _ in ranges)
            what = "a range rather than a list" if len(ranges) == 1 else "ranges rather than lists"
            raise SpaceError(
                f"GridSearch cannot expand {labels}, {what} of values; "
                f"use grid([...]) / choice([...]) for {names}, or RandomSearch"
            )

    def validate_point(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """params completed with constants and made plain; raises if a value is inadmissible."""
        if not isinstance(params, Mapping):
            raise SpaceError(
                f"params must be a mapping of parameter names to values, got {_show(params)}; "
                "pass a dict such as {'lr': 0.01}"
            )
        self._check_point_names(params)
        point = {}
        for name, d in self._domains.items():
            if isinstance(d, BaseDomain):
                point[name] = d._admit(params[name], name)
            elif name in params:
                point[name] = _admit_constant(d, params[name], name)
            else:
                point[name] = copy.deepcopy(d)
        return point

    def _check_point_names(self, params: Mapping[str, Any]) -> None:
        known = ", ".join(repr(n) for n in self._domains) or "none"
        unknown = [k for k in params if k not in self._domains]
        if unknown:
            raise SpaceError(
                f"params has unknown name{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(k) for k in unknown)}; "
                f"the space knows {known}; drop them or add them to the space"
            )
        missing = [
            n for n, d in self._domains.items() if isinstance(d, BaseDomain) and n not in params
        ]
        if missing:
            raise SpaceError(
                f"params is missing {', '.join(repr(n) for n in missing)}, which the space "
                "samples; give a value for each (only constants may be left out)"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-friendly description, e.g. {'lr': {'type': 'loguniform', 'low': ..., ...}}."""
        return {
            name: {"type": d.kind, **d._fields()}
            if isinstance(d, BaseDomain)
            else {"type": "constant", "value": _thaw(d)}
            for name, d in self._domains.items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Space:
        """The Space that ``to_dict`` described (the inverse of ``to_dict``)."""
        if not isinstance(data, Mapping):
            raise SpaceError(
                f"Space.from_dict needs the mapping that Space.to_dict returns, got "
                f"{_show(data)}; pass e.g. {{'lr': {{'type': 'uniform', 'low': 0.0, 'high': 1.0}}}}"
            )
        return cls({name: _entry_from_dict(name, entry) for name, entry in data.items()})


def _admit_constant(constant: Any, value: Any, name: str) -> Any:
    try:
        same = _same(_freeze(value), constant)
    except _NotPlainError:
        same = False
    if not same:
        raise SpaceError(
            f"params[{name!r}]={value!r} differs from the constant {_thaw(constant)!r} in the "
            f"space; leave {name!r} out, or make it a choice([...]) in the space"
        )
    return copy.deepcopy(constant)


def _entry_from_dict(name: Any, entry: Any) -> Any:
    types = ", ".join(repr(t) for t in [*_DOMAIN_TYPES, "constant"])
    if not isinstance(entry, Mapping) or (
        entry.get("type") != "constant" and entry.get("type") not in _DOMAIN_TYPES
    ):
        raise SpaceError(
            f"entry {name!r} of a space dict needs a 'type' among {types}, got {entry!r}; "
            "pass what Space.to_dict returned"
        )
    kind = entry["type"]
    cls = _DOMAIN_TYPES.get(kind)
    fields = ["value"] if cls is None else [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if set(entry) != {"type", *fields}:
        raise SpaceError(
            f"entry {name!r} of type {kind!r} needs keys {['type', *fields]}, "
            f"got {sorted(entry)}; pass what Space.to_dict returned"
        )
    if cls is None:
        return entry["value"]
    return cls(**{f: entry[f] for f in fields})  # Space checks it, naming the parameter
