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
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from modelhopper._domains import (
    _DOMAIN_TYPES,
    _FACTORY_NAMES,
    _PLAIN_HINT,
    BaseDomain,
    Choice,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    Uniform,
    _freeze,
    _label,
    _NotPlainError,
    _same,
    _show,
    _thaw,
    _ValuesDomain,
    choice,
    grid,
    loguniform,
    quniform,
    randint,
    uniform,
)
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
