"""Ranking MSTs on several objectives, with constraints: the multi-objective "better".

An MST's objective vector is its metrics at its **last evaluated epoch** (the
rule of ``_ranking``), each turned into a value to maximise (``score``: a
missing or non-finite value is -inf). MSTs are ordered:

1. feasible before infeasible: a constraint (``"val_n_params <= 100000"``) that an
   MST's metrics break makes it infeasible; infeasible MSTs come last, least
   violation first (Deb's constrained domination, as in constrained NSGA-II);
2. among feasible ones, by Pareto front (non-dominated sorting: front 0 is the
   MSTs no other MST dominates, front 1 those only front 0 dominates, ...);
3. within a front, by crowding distance, largest first (NSGA-II's tie-break, as
   MO-ASHA uses it: spread-out trade-offs before crowded ones; a front's extreme
   points get infinity);
4. then the lower MST id.

With one objective and no constraint this is exactly ``_ranking.ranked``. On the
ground floor: it imports only the vocabulary and ``_ranking``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from modelhopper._ranking import direction_of, score, scorer
from modelhopper._vocabulary import Direction

__all__ = [
    "Constraint",
    "Objectives",
    "check_objectives",
    "crowding_distances",
    "dominates",
    "non_dominated_fronts",
    "pareto_front",
    "pareto_ranked",
    "ranks_within",
]

T = TypeVar("T")
Objectives = dict[str, Direction]

_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=)\s*(\S+)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` or ``metric >= bound`` on an MST's metrics at its last epoch."""

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: object) -> Constraint:
        found = _CONSTRAINT.match(text) if isinstance(text, str) else None
        bound = _number(found.group(3)) if found else None
        if found is None or bound is None:
            raise ValueError(
                f"a constraint is 'metric <= number' or 'metric >= number', got {text!r}; "
                "e.g. 'val_n_params <= 100000'"
            )
        return cls(found.group(1), found.group(2), bound)

    def violation(self, metrics: Mapping[str, Any]) -> float:
        """0 when it holds; else how far the metric is past the bound (inf if missing)."""
        value = metrics.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return math.inf
        if _OPERATORS[self.op](float(value), self.bound):
            return 0.0
        return abs(float(value) - self.bound)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def _number(text: str) -> float | None:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def check_objectives(objectives: Mapping[str, Any]) -> Objectives:
    """Metric name -> Direction, in the given order; ValueError naming what is wrong."""
    if not isinstance(objectives, Mapping) or not objectives:
        raise ValueError(
            "objectives must map metric names to 'maximize' or 'minimize', e.g. "
            f"{{'val_accuracy': 'maximize', 'val_n_params': 'minimize'}}; got {objectives!r}"
        )
    checked: Objectives = {}
    for name, direction in objectives.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"an objective's metric must be a name, got {name!r}")
        try:
            checked[name] = Direction(direction)
        except ValueError:
            raise ValueError(
                f"objective {name!r}: direction must be 'maximize' or 'minimize', got {direction!r}"
            ) from None
    return checked


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere (max)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(
        x > y for x, y in zip(a, b, strict=True)
    )


def non_dominated_fronts(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Indices of ``points`` by Pareto front, best front first (Deb et al.'s fast sort)."""
    if points and len(points[0]) == 1 and not any(math.isnan(p[0]) for p in points):
        return _fronts_of_one_objective([p[0] for p in points])
    dominated_by: list[list[int]] = [[] for _ in points]  # i -> the points i dominates
    n_dominating = [0] * len(points)
    for i, a in enumerate(points):
        for j in range(i + 1, len(points)):
            if dominates(a, points[j]):
                dominated_by[i].append(j)
                n_dominating[j] += 1
            elif dominates(points[j], a):
                dominated_by[j].append(i)
                n_dominating[i] += 1
    fronts = []
    current = [i for i, n in enumerate(n_dominating) if n == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominated_by[i]:
                n_dominating[j] -= 1
                if n_dominating[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def _fronts_of_one_objective(values: Sequence[float]) -> list[list[int]]:
    """With one objective a front is the points of one value: a sort, not n^2 comparisons
    (ASHA ranks every rung on each idle worker; thousands of MSTs made that quadratic)."""
    fronts: list[list[int]] = []
    for i in sorted(range(len(values)), key=lambda i: (-values[i], i)):
        if fronts and values[fronts[-1][0]] == values[i]:
            fronts[-1].append(i)
        else:
            fronts.append([i])
    return fronts


def crowding_distances(points: Sequence[Sequence[float]], front: list[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each member of ``front`` (extremes: infinity)."""
    distance = dict.fromkeys(front, 0.0)
    if len(front) <= 2:
        return dict.fromkeys(front, math.inf)
    for k in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: (points[i][k], i))
        low, high = points[ordered[0]][k], points[ordered[-1]][k]
        span = high - low
        if not math.isfinite(span) or span == 0:  # all equal here: no one is an extreme
            continue
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        for before, member, after in zip(ordered, ordered[1:], ordered[2:], strict=False):
            distance[member] += (points[after][k] - points[before][k]) / span
    return distance


def pareto_ranked(
    items: Iterable[T],
    metrics: Callable[[T], Mapping[str, Any]],
    ident: Callable[[T], Any],
    objectives: Mapping[str, Direction | str | bool | None],
    constraints: Sequence[Constraint] = (),
) -> list[T]:
    """``items`` best first by the module's order (feasibility, front, crowding, id)."""
    pool = sorted(items, key=ident)
    if len(objectives) == 1 and not constraints:
        # One front per value, ties by id (crowding is equal within such a front): a sort
        # by score. ASHA ranks a rung at every decision; this keeps that O(n log n) cheap.
        ((name, direction),) = objectives.items()
        of = scorer(direction)
        return sorted(pool, key=lambda item: -of(metrics(item).get(name)))
    values = [metrics(item) for item in pool]
    violation = [sum(c.violation(v) for c in constraints) for v in values]
    feasible = [i for i, v in enumerate(violation) if v == 0]
    infeasible = sorted((i for i, v in enumerate(violation) if v > 0), key=violation.__getitem__)
    points = [
        tuple(score(values[i].get(name), direction_of(d)) for name, d in objectives.items())
        for i in range(len(pool))
    ]
    order: list[int] = []
    for front in non_dominated_fronts([points[i] for i in feasible]):
        members = [feasible[i] for i in front]
        crowding = crowding_distances(points, members)
        order += sorted(members, key=lambda i: (-crowding[i], i))
    return [pool[i] for i in order + infeasible]


def ranks_within(
    items: Sequence[T],
    target: T,
    k: int,
    metrics: Callable[[T], Mapping[str, Any]],
    ident: Callable[[T], Any],
    objectives: Mapping[str, Direction | str | bool | None],
    constraints: Sequence[Constraint] = (),
) -> bool:
    """Whether ``target`` (one of ``items``) is among the first ``k`` of
    ``pareto_ranked(items, ...)``. One objective and no constraint: a count of the items
    ranked ahead of it, O(n) (ASHA's stopping rule asks this at every rung report)."""
    if len(objectives) == 1 and not constraints:
        ((name, direction),) = objectives.items()
        of = scorer(direction)
        mine, me = of(metrics(target).get(name)), ident(target)
        ahead = 0
        for item in items:  # ahead: a better score, or the same one and a lower id
            value = of(metrics(item).get(name))
            ahead += value > mine or (value == mine and ident(item) < me)
        return ahead < k
    return ident(target) in {ident(i) for i in pareto_ranked(
        items, metrics, ident, objectives, constraints)[:k]}  # fmt: skip


def pareto_front(
    items: Iterable[T],
    metrics: Callable[[T], Mapping[str, Any]],
    ident: Callable[[T], Any],
    objectives: Mapping[str, Direction | str | bool | None],
    constraints: Sequence[Constraint] = (),
) -> list[T]:
    """The feasible items no other feasible item dominates, in ``pareto_ranked``'s order;
    an item with no finite objective value (no epoch yet) is never on it."""
    feasible = [item for item in items if all(c.violation(metrics(item)) == 0 for c in constraints)]
    points = [
        tuple(score(metrics(item).get(name), direction_of(d)) for name, d in objectives.items())
        for item in feasible
    ]
    fronts = non_dominated_fronts(points)
    front = [
        feasible[i] for i in (fronts[0] if fronts else [])
        if any(v > -math.inf for v in points[i])
    ]  # fmt: skip
    return pareto_ranked(front, metrics, ident, objectives)
