"""The one rule for "which MST is better", used by every part that ranks MSTs.

An MST's standing is the run's metric at its **last evaluated epoch** (what
``load_model()`` returns by default, and what a procedure's rung compares); a
missing or non-finite value ranks below every number; ties go to the lower MST
id. ``Result.best``, ``to_dataframe``, ``plot``, the dashboard and ``modelhopper
show`` all rank this way. The value at an MST's best epoch (``best_metrics``,
``load_model(best=True)``) is reported beside it, never used to rank.

On the ground floor: it imports only the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from modelhopper._vocabulary import Direction

__all__ = [
    "DEFAULT_DIRECTION",
    "Direction",
    "best_epoch",
    "better",
    "direction_of",
    "ranked",
    "score",
]

T = TypeVar("T")


DEFAULT_DIRECTION = Direction.MINIMIZE  # procedures' default metric is val_loss


def direction_of(value: Direction | str | bool | None) -> Direction:
    """A Direction from its name, an enum, or ``maximize`` as a bool; None is the default."""
    if value is None:
        return DEFAULT_DIRECTION
    if isinstance(value, bool):
        return Direction.MAXIMIZE if value else Direction.MINIMIZE
    return Direction(value)


def score(value: Any, direction: Direction | str | bool | None) -> float:
    """The value as a number to maximise; -inf when it is missing, NaN or infinite."""
    return scorer(direction)(value)


def scorer(direction: Direction | str | bool | None) -> Callable[[Any], float]:
    """``score`` for one direction, resolved once (for scoring many values)."""
    sign = 1.0 if direction_of(direction) is Direction.MAXIMIZE else -1.0

    def of(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return float("-inf")
        return sign * float(value) if math.isfinite(value) else float("-inf")

    return of


def better(value: Any, than: Any, direction: Direction | str | bool | None) -> bool:
    """Whether ``value`` is strictly better than ``than`` (None: nothing yet, any number wins)."""
    if than is None:
        return score(value, direction) > float("-inf")
    return score(value, direction) > score(than, direction)


def ranked(
    items: Iterable[T],
    value: Any,
    ident: Any,
    direction: Direction | str | bool | None,
) -> list[T]:
    """``items`` best first by ``value(item)``; ties (and missing values) by ``ident(item)``."""
    return sorted(items, key=lambda item: (-score(value(item), direction), ident(item)))


def best_epoch(
    history: Sequence[Mapping[str, Any]], metric: str, direction: Direction | str | bool | None
) -> int | None:
    """Position in ``history`` of the epoch where ``metric`` was best (earliest on ties)."""
    scored = [(score(row.get(metric), direction), -i) for i, row in enumerate(history)]
    if not scored or max(scored)[0] == float("-inf"):
        return None
    return -max(scored)[1]
