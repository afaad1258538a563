"""The conformance suite every estimator kind (``estimator.Trainable``) passes.

Subclass it in a test module and say how to build an estimator of your kind
for params and how to make a dataset it can train on::

    class TestMyEstimator(EstimatorConformance):
        def make_estimator(self, params):
            return MyEstimator(...)          # params: {"lr": ...}

        def dataset(self):
            return x_train, y_train, x_val, y_val   # numpy arrays

What MOP needs of an estimator: a pass reports sums (so shards aggregate
exactly) and is a function of the state and the shard alone; the state it
hands over is everything that decides its future (a fresh estimator given it
trains on exactly as the original would: the hop, the resume); evaluation
changes nothing.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch

from modelhopper.estimator import (
    PassResult,
    Trainable,
    build_estimator,
    state_from_bytes,
    state_to_bytes,
)

__all__ = ["EstimatorConformance"]


class EstimatorConformance(abc.ABC):
    """Contracts of ``Trainable`` that the workers rely on."""

    params: dict[str, Any] = {}  # what make_estimator gets

    @abc.abstractmethod
    def make_estimator(self, params: dict[str, Any]) -> Trainable:
        """A new estimator of the kind under test."""

    @abc.abstractmethod
    def dataset(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_val, y_val) the estimator trains on."""

    # -- helpers ---------------------------------------------------------------------
    def _build(self, seed: int = 7) -> tuple[Trainable, torch.Tensor]:
        estimator = build_estimator(self.make_estimator, self.params, seed)
        return estimator, torch.get_rng_state()

    def _train(self, estimator: Trainable, rng: torch.Tensor, epoch: int, shard: int):
        x, y, _, _ = self.dataset()
        torch.set_rng_state(rng)
        result = estimator.train_pass(x, y, seed=7, epoch=epoch, shard=shard)
        return result, torch.get_rng_state()

    def _hop(self, estimator: Trainable, rng: torch.Tensor) -> tuple[Trainable, torch.Tensor]:
        """The estimator's state, through bytes, into a fresh estimator (as a hop does)."""
        state = state_from_bytes(state_to_bytes(estimator.get_state(rng)))
        fresh, _ = self._build(seed=99)  # other initial weights: the state must win
        return fresh, fresh.set_state(state)

    # -- the contracts ---------------------------------------------------------------
    def test_it_is_trainable(self) -> None:
        estimator, _ = self._build()
        assert isinstance(estimator, Trainable)
        assert estimator.batch_size >= 1

    def test_a_pass_reports_sums_over_every_example(self) -> None:
        estimator, rng = self._build()
        x, y, vx, vy = self.dataset()
        result, _ = self._train(estimator, rng, 0, 0)
        assert isinstance(result, PassResult) and result.n == len(y)
        assert np.isfinite(result.loss_sum) and result.loss_sum > 0
        for name in estimator.metrics:
            assert name in result.metric_sums
        evaluated = estimator.evaluate_pass(vx, vy)
        assert evaluated.n == len(vy)

    def test_training_is_a_function_of_the_seed(self) -> None:
        first, rng_a = self._build()
        second, rng_b = self._build()
        a, _ = self._train(first, rng_a, 0, 1)
        b, _ = self._train(second, rng_b, 0, 1)
        assert a.loss_sum == b.loss_sum and a.metric_sums == b.metric_sums

    def test_a_hopped_state_trains_on_exactly_as_the_original(self) -> None:
        original, rng = self._build()
        _, rng = self._train(original, rng, 0, 0)
        hopped, hopped_rng = self._hop(original, rng)
        a, _ = self._train(original, rng, 0, 1)
        b, _ = self._train(hopped, hopped_rng, 0, 1)
        assert a.loss_sum == b.loss_sum and a.metric_sums == b.metric_sums
        _, _, vx, vy = self.dataset()
        assert original.evaluate_pass(vx, vy).loss_sum == hopped.evaluate_pass(vx, vy).loss_sum

    def test_evaluation_changes_nothing(self) -> None:
        estimator, rng = self._build()
        _, _, vx, vy = self.dataset()
        first = estimator.evaluate_pass(vx, vy)
        second = estimator.evaluate_pass(vx, vy)
        assert first.loss_sum == second.loss_sum
        before = state_to_bytes(estimator.get_state(rng))
        estimator.evaluate_pass(vx, vy)
        assert state_to_bytes(estimator.get_state(rng)) == before
