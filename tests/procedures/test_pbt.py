from __future__ import annotations

import math

import numpy as np
import pytest

from modelhopper.errors import ConfigError
from modelhopper.procedures._base import Decision
from modelhopper.procedures._pbt import PBT
from modelhopper.space import choice, grid, loguniform, quniform, randint, uniform
from modelhopper.testing import FakeTrainer

SPACE = {
    "lr": loguniform(1e-4, 1e-1),
    "momentum": uniform(0.5, 0.99),
    "width": choice([16, 32, 64, 128]),
    "batch_size": 32,
}


def _make(params):
    return None


def _loss(params, epoch):
    return (math.log10(params["lr"]) + 2) ** 2 + abs(params["momentum"] - 0.9) + 1 / (epoch + 1)


def _pbt(space=SPACE, **kwargs):
    defaults = {"population_size": 8, "epochs": 8, "interval": 2, "seed": 0}
    return PBT(_make, space, **{**defaults, **kwargs})


# ---------------------------------------------------------------- explore


@pytest.mark.parametrize(
    ("domain", "value", "allowed"),
    [
        (uniform(0.0, 1.0), 0.5, {0.4, 0.6}),
        (uniform(0.0, 1.0), 0.9, {0.72, 1.0}),  # 1.08 clipped to high
        (loguniform(1e-4, 1e-1), 1e-2, {0.008, 0.012}),
        (loguniform(1e-4, 1e-1), 1e-4, {1e-4, 1.2e-4}),  # 0.8e-4 clipped to low
        (quniform(0.0, 2.0, 0.25), 1.0, {0.75, 1.25}),  # rounded to multiples of q
        (randint(1, 10), 5, {4, 6}),
        (randint(1, 10), 2, {1, 3}),  # 1.6 -> 2 and 2.4 -> 2 move by one
        (randint(1, 10), 9, {7, 9}),  # 10.8 -> 11 is clipped to high - 1
        (choice(["a", "b", "c", "d"]), "b", {"a", "c"}),  # a neighbour
        (choice(["a", "b", "c", "d"]), "a", {"b"}),  # from an end, inward
        (grid([[1, 2], [3], [4, 5]]), (3,), {(1, 2), (4, 5)}),
    ],
)
def test_explore_perturbs_within_the_domain(domain, value, allowed):
    pbt = _pbt({"p": domain, "fixed": "keep"}, resample_probability=0.0)
    seen = set()
    for seed in range(40):
        new = pbt.explore({"p": value, "fixed": "keep"}, np.random.default_rng(seed))
        assert new["fixed"] == "keep"
        seen.add(round(new["p"], 12) if isinstance(new["p"], float) else new["p"])
    assert seen == {round(a, 12) if isinstance(a, float) else a for a in allowed}


def test_explore_resamples_with_resample_probability():
    pbt = _pbt({"p": uniform(0.0, 1.0)}, resample_probability=1.0)
    values = {pbt.explore({"p": 0.5}, np.random.default_rng(s))["p"] for s in range(20)}
    assert len(values) == 20 and not values & {0.4, 0.6}


# ---------------------------------------------------------------- exploit


def test_a_bottom_member_at_a_boundary_is_replaced_by_a_perturbed_top_member():
    pbt = _pbt(population_size=4, epochs=6, interval=2, quantile=0.25)
    trainer = FakeTrainer(pbt, n_workers=4, objective_fn=lambda p, e: 0.0)
    trainer.run(n_epochs=0)
    for m in range(4):
        assert trainer.evaluate(m, 1.0) is Decision.CONTINUE  # epoch 1: no boundary
    # at the boundary (2 epochs) MSTs report in id order; MST 3 is the worst and reports last
    decisions = [trainer.evaluate(m, loss) for m, loss in enumerate([0.2, 0.1, 0.3, 0.9])]
    assert decisions == [Decision.CONTINUE] * 3 + [Decision.STOP]
    assert trainer.status(3) == "stopped"
    child = trainer.msts()[4]
    assert child.parent == 1  # the top quantile of 4 is MST 1 alone
    assert trainer.warm_start[4] is True and trainer.budget(4) == 6 - 2
    assert child.params != trainer.msts()[1].params
    assert child.params["batch_size"] == 32
    assert pbt.space.validate_point(child.params) == child.params
    # the child's own 2nd epoch puts it at 4 epochs, the next boundary
    trainer.evaluate(4, 0.5)
    assert pbt._offset(trainer, 4) == 2


def test_a_member_is_judged_against_those_that_reported_at_its_boundary():
    pbt = _pbt(population_size=4, epochs=6, interval=2, quantile=0.25)
    trainer = FakeTrainer(pbt, n_workers=4, objective_fn=lambda p, e: 0.0)
    trainer.run(n_epochs=0)
    for m in range(4):
        trainer.evaluate(m, 1.0)
    # the worst reports first: floor(1 * 0.25) = 0 members can be cut, so it goes on
    decisions = [trainer.evaluate(m, loss) for m, loss in [(3, 0.9), (0, 0.2), (1, 0.1), (2, 0.3)]]
    assert decisions == [Decision.CONTINUE] * 4
    assert len(trainer.msts()) == 4


def test_pbt_run_keeps_the_population_and_every_lineage_trains_epochs():
    pbt = _pbt(population_size=8, epochs=8, interval=2)
    trainer = FakeTrainer(pbt, n_workers=3, objective_fn=_loss).run()
    msts = trainer.msts()
    children = [m for m in msts if m.parent is not None]
    assert children, "some member was replaced"
    finished = [m.id for m in msts if trainer.status(m.id) == "completed"]
    assert len(finished) == 8  # one per population member
    for m in finished:
        assert pbt._offset(trainer, m) + len(trainer.results(m)) == 8
    for child in children:
        assert trainer.warm_start[child.id]
        assert trainer.budget(child.id) in (6, 4, 2)  # what the replaced member had left
        assert pbt.space.validate_point(child.params) == child.params
    stopped = [m.id for m in msts if trainer.status(m.id) == "stopped"]
    assert len(stopped) == len(children)
    for m in stopped:  # replaced at a boundary, never ran again
        position = pbt._offset(trainer, m) + len(trainer.results(m))
        assert position % 2 == 0 and position < 8
        assert all(e.start < trainer.stopped_at[m] for e in trainer.log if e.mst_id == m)
    assert trainer.utilisation() > 0.9


def test_pbt_is_deterministic_and_resumes_to_the_same_run():
    def run(seed, crash_at=None):
        trainer = FakeTrainer(_pbt(seed=seed), 3, _loss)
        if crash_at is not None:
            trainer.run(n_epochs=crash_at)
            trainer = trainer.resume(_pbt(seed=seed))
        return trainer.run()

    a, b, c = run(0), run(0, crash_at=23), run(1)
    assert a.calls == b.calls and a.msts() == b.msts() and a.log == b.log
    assert [m.params for m in a.msts()] != [m.params for m in c.msts()]


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 8}, "interval < epochs must hold .* got interval=8, epochs=8"),
        ({"population_size": 3}, r"population_size \* quantile >= 1 .* population_size=3"),
        ({"quantile": 0.6}, r"quantile must be a number in \[0.0, 0.5\], got 0.6"),
        ({"perturbation_factors": ()}, "perturbation_factors must be a non-empty sequence"),
        ({"perturbation_factors": (0.8, -1)}, "of numbers > 0, got"),
        ({"resample_probability": 2}, r"resample_probability must be a number in \[0.0, 1.0\]"),
        ({"population_size": 0}, "population_size must be an integer >= 1, got 0"),
    ],
)  # fmt: skip
def test_pbt_argument_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _pbt(**kwargs)


def test_explore_moves_only_the_mutable_params():
    pbt = _pbt(mutable=["lr"], resample_probability=1.0)
    rng = np.random.default_rng(0)
    params = pbt.space.sample(rng)
    for _ in range(20):
        new = pbt.explore(params, rng)
        assert {k: v for k, v in new.items() if k != "lr"} == {
            k: v for k, v in params.items() if k != "lr"
        }


def test_mutable_must_name_space_params():
    with pytest.raises(ConfigError, match=r"mutable must name parameters of the space.*'depth'"):
        _pbt(mutable=["depth"])
