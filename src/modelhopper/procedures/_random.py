from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelhopper._checks import check_int
from modelhopper.estimator import Estimator
from modelhopper.procedures._base import BaseProcedure
from modelhopper.space import Space

__all__ = ["RandomSearch"]


class RandomSearch(BaseProcedure):
    """``n_msts`` points drawn from the space with the seed."""

    def __init__(
        self,
        make_estimator: Callable[[dict[str, Any]], Estimator],
        space: Space | Mapping[str, Any],
        *,
        n_msts: int,
        epochs: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(make_estimator, space, epochs=epochs, **kwargs)
        self.n_msts = check_int("n_msts", n_msts, example="n_msts=16")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "n_msts": self.n_msts}

    def propose(self) -> list[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, 1])
        return [self.space.sample(rng) for _ in range(self.n_msts)]
