from __future__ import annotations

from typing import Any

from modelhopper.procedures._base import BaseProcedure

__all__ = ["GridSearch"]


class GridSearch(BaseProcedure):
    """Every combination of the space's ``grid`` and ``choice`` values; constants fixed."""

    def propose(self) -> list[dict[str, Any]]:
        return self.space.grid_points()
