from __future__ import annotations

import functools
import math
from collections import defaultdict

import pytest

from modelhopper.errors import ConfigError
from modelhopper.procedures._base import MST, Decision, EpochResult
from modelhopper.procedures._hyperband import ASHA, Hyperband, SuccessiveHalving, rungs
from modelhopper.space import choice, loguniform, uniform
from modelhopper.testing import FakeTrainer

SPACE = {"lr": loguniform(1e-4, 1e-1), "width": choice([16, 32, 64]), "batch_size": 32}


def _make(params):
    return None


def _loss(params, epoch):
    """Best near lr=1e-2 and width 64; improves with epochs."""
    return (math.log10(params["lr"]) + 2) ** 2 + 1 / (epoch + 1) + 0.1 * (params["width"] != 64)


def _cost(params):
    return params["width"] / 32  # 0.5, 1 or 2 seconds an epoch


def _scripted(procedure, values, epochs=1):
    """A trainer whose MSTs 0..n-1 (x = i / 100) reported ``values`` after ``epochs`` epochs."""
    trainer = FakeTrainer(procedure, n_workers=3, objective_fn=lambda p, e: 0.0)
    for i, value in enumerate(values):
        trainer.add({"x": i / 100}, epochs=epochs)
        for _ in range(epochs):
            trainer.evaluate(i, value, notify=False)
    return trainer


# ---------------------------------------------------------------- rung arithmetic


@pytest.mark.parametrize(
    ("min_epochs", "max_epochs", "eta", "expected"),
    [
        (1, 9, 3, (1, 3, 9)),
        (1, 10, 3, (1, 3, 9, 10)),
        (1, 27, 3, (1, 3, 9, 27)),
        (2, 16, 2, (2, 4, 8, 16)),
        (3, 20, 3, (3, 9, 20)),
        (5, 6, 4, (5, 6)),
        (4, 4, 3, (4,)),
        (1, 2, 5, (1, 2)),
    ],
)
def test_rungs(min_epochs, max_epochs, eta, expected):
    assert rungs(min_epochs, max_epochs, eta) == expected
    asha = ASHA(
        _make, SPACE, min_epochs=min_epochs, max_epochs=max_epochs,
        reduction_factor=eta, n_msts=4,
    )  # fmt: skip
    assert asha.rungs == asha.brackets[0] == expected


@pytest.mark.parametrize(
    ("min_epochs", "max_epochs", "eta", "brackets", "sizes"),
    [
        (1, 9, 3, ((1, 3, 9), (3, 9), (9,)), (9, 5, 3)),
        (1, 10, 3, ((1, 3, 9, 10), (3, 9, 10), (9, 10)), (9, 5, 3)),
        (1, 81, 3, ((1, 3, 9, 27, 81), (3, 9, 27, 81), (9, 27, 81), (27, 81), (81,)),
         (81, 34, 15, 8, 5)),  # the table of Li et al. (2018), R=81, eta=3
        (1, 8, 2, ((1, 2, 4, 8), (2, 4, 8), (4, 8), (8,)), (8, 6, 4, 4)),
        (2, 5, 3, ((2, 5),), (1,)),
        (4, 4, 2, ((4,),), (1,)),
    ],
)  # fmt: skip
def test_hyperband_brackets(min_epochs, max_epochs, eta, brackets, sizes):
    hb = Hyperband(
        _make, SPACE, min_epochs=min_epochs, max_epochs=max_epochs,
        reduction_factor=eta, n_msts=10, bracket_weights="equal_epochs",
    )  # fmt: skip
    assert hb.brackets == brackets
    assert hb.bracket_sizes == sizes
    cycle = hb.bracket_cycle
    assert len(cycle) == sum(sizes)
    assert [cycle.count(b) for b in range(len(sizes))] == list(sizes)
    # interleaved: every prefix is within one MST of the proportions
    for n in range(1, len(cycle) + 1):
        for b, size in enumerate(sizes):
            assert abs(cycle[:n].count(b) - n * size / len(cycle)) < 1 + 1e-9


@pytest.mark.parametrize(
    ("max_epochs", "sizes"),
    [(81, (55, 20, 7, 3, 1)), (52, (20, 7, 3, 1)), (9, (7, 3, 1)), (2, (1,))],
)
def test_geometric_brackets_are_each_e_times_the_next(max_epochs, sizes):
    hb = Hyperband(_make, SPACE, max_epochs=max_epochs, n_msts=10)
    assert hb.bracket_weights == "geometric" and hb.bracket_sizes == sizes
    assert [hb.bracket_cycle.count(b) for b in range(len(sizes))] == list(sizes)
    assert hb.settings()["bracket_weights"] == "geometric"


def test_bracket_weights_may_be_given_per_bracket():
    hb = Hyperband(_make, SPACE, max_epochs=9, n_msts=10, bracket_weights=[1, 1, 2])
    assert hb.bracket_sizes == (1, 1, 2) and sorted(hb.bracket_cycle) == [0, 1, 2, 2]
    assert hb.settings()["bracket_weights"] == [1, 1, 2]
    once = Hyperband(_make, SPACE, max_epochs=9, n_msts=10, bracket_weights=iter([1, 1, 2]))
    assert once.bracket_sizes == (1, 1, 2)  # an iterable read once is read once


@pytest.mark.parametrize("weights", ["uniform", [1, 2], [1, 0, 1], [1.5, 1, 1], [True, 1, 1]])
def test_bad_bracket_weights_are_refused(weights):
    with pytest.raises(ConfigError, match=r"bracket_weights must be one of \('geometric', 'eq"):
        Hyperband(_make, SPACE, max_epochs=9, n_msts=10, bracket_weights=weights)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_epochs": 5, "max_epochs": 3}, "max_epochs must hold, got min_epochs=5, max"),
        ({"max_epochs": 9, "reduction_factor": 1}, "reduction_factor must be an integer >= 2"),
        ({"max_epochs": 9, "reduction_factor": 2.5}, "got 2.5; e.g. reduction_factor=3"),
        ({"max_epochs": 0}, "max_epochs must be an integer >= 1, got 0"),
        ({"max_epochs": 9, "min_epochs": 0}, "min_epochs must be an integer >= 1, got 0"),
        ({"max_epochs": 9, "n_msts": 0}, "n_msts must be an integer >= 1, got 0"),
    ],
)
@pytest.mark.parametrize("cls", [ASHA, Hyperband, SuccessiveHalving])
def test_halving_argument_errors(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        cls(_make, SPACE, **{"n_msts": 9, **kwargs})


# ---------------------------------------------------------------- ASHA promotions

NAN = float("nan")


@pytest.mark.parametrize(
    ("values", "eta", "direction", "promoted"),
    [
        ([5, 3, 8, 1, 9, 2, 7, 4, 6], 3, "minimize", [3, 5, 1]),
        ([5, 3, 8, 1, 9, 2, 7, 4, 6], 3, "maximize", [4, 2, 6]),
        ([1, 1, 1, 1, 2, 2, 2, 2, 2], 3, "minimize", [0, 1, 2]),  # ties: lower id first
        ([NAN, 3, 8, 1, 9, 2, 7, 4, 6], 3, "maximize", [4, 2, 6]),  # NaN ranks last
        ([NAN, NAN, NAN, 5, 6, 7, 8, 9, 4], 3, "minimize", [8, 3, 4]),
        ([5, 3, 8, 1, 9, 2, 7, 4], 3, "minimize", [3, 5]),  # floor(8 / 3) = 2
        ([4, 3, 2, 1], 2, "minimize", [3, 2]),
        ([4, 3], 3, "minimize", []),  # floor(2 / 3) = 0: nothing promotable yet
    ],
)
def test_asha_promotes_the_top_of_a_rung_in_order(values, eta, direction, promoted):
    asha = ASHA(
        _make, {"x": uniform(0, 1)}, max_epochs=eta, reduction_factor=eta,
        n_msts=len(values), direction=direction,
    )  # fmt: skip
    trainer = _scripted(asha, values)
    asha.on_idle(trainer, n_idle=len(values))
    assert trainer.calls[len(values) :] == [("extend", m, eta) for m in promoted]


def test_asha_promotes_one_job_per_idle_worker_and_the_higher_rung_first():
    asha = ASHA(_make, {"x": uniform(0, 1)}, max_epochs=9, n_msts=9)
    trainer = _scripted(asha, [5, 3, 8, 1, 9, 2, 7, 4, 6])
    asha.on_idle(trainer, n_idle=1)
    assert trainer.calls[-1] == ("extend", 3, 3)
    for value in [0.5, 0.4]:  # MST 3 reaches rung 1 (3 epochs) alone: floor(1 / 3) = 0
        trainer.evaluate(3, value, notify=False)
    asha.on_idle(trainer, n_idle=2)
    assert trainer.calls[-2:] == [("extend", 5, 3), ("extend", 1, 3)]
    for m, value in [(5, 0.1), (5, 0.2), (1, 0.3), (1, 0.6)]:
        trainer.evaluate(m, value, notify=False)
    # rung 1 now has 3 reports (MST 5 best): it goes before anything of rung 0
    asha.on_idle(trainer, n_idle=3)
    assert trainer.calls[-1:] == [("extend", 5, 9)]  # n_msts added and rung 0 is used up


class _StopsOnReport(ASHA):
    """ASHA that, instead of deciding, stops MST ``target`` when it reports."""

    target = 3

    def on_epoch_end(self, trainer, result: EpochResult) -> Decision:
        if result.mst_id == self.target:
            trainer.stop(self.target)
        return Decision.CONTINUE


def test_asha_never_promotes_a_stopped_mst():
    asha = _StopsOnReport(_make, {"x": uniform(0, 1)}, max_epochs=3, n_msts=12)
    trainer = FakeTrainer(asha, n_workers=3, objective_fn=lambda p, e: 0.0)
    for i, value in enumerate([5, 3, 8, 1, 9, 2, 7, 4, 6]):
        trainer.add({"x": i / 100}, epochs=1)
        trainer.evaluate(i, value)
    assert trainer.status(3) == "stopped"
    asha.on_idle(trainer, n_idle=3)
    # MST 3 keeps its rank (the top 3 are 3, 5, 1) but only 5 and 1 go on; then a new MST
    assert trainer.calls[-3:] == [("extend", 5, 3), ("extend", 1, 3), ("add", 9, 1)]


def test_asha_never_waits_when_nothing_is_promotable():
    asha = ASHA(_make, {"x": uniform(0, 1)}, max_epochs=9, n_msts=20)
    trainer = _scripted(asha, [2.0, 1.0])  # floor(2 / 3) = 0
    asha.on_idle(trainer, n_idle=3)
    assert trainer.calls[-3:] == [("add", 2, 1), ("add", 3, 1), ("add", 4, 1)]


def test_asha_keeps_every_worker_busy_until_all_msts_are_added():
    asha = ASHA(_make, SPACE, max_epochs=9, n_msts=40, seed=3)
    trainer = FakeTrainer(asha, n_workers=4, objective_fn=_loss, cost=_cost).run()
    last_add = max(e.start for e in trainer.log if e.epoch == 0)
    for worker in range(4):
        spans = sorted((e.start, e.end) for e in trainer.log if e.worker == worker)
        assert spans[0][0] == 0
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            if start <= last_add:
                assert start == end  # no gap before the last MST started
    assert len(trainer.msts()) == 40
    assert all(call[2] in asha.rungs for call in trainer.calls)


def test_asha_finds_the_best_and_spends_less_than_training_all():
    asha = ASHA(_make, SPACE, max_epochs=9, n_msts=27, seed=1)
    trainer = FakeTrainer(asha, n_workers=3, objective_fn=_loss).run()
    epochs = defaultdict(int)
    for e in trainer.log:
        epochs[e.mst_id] += 1
    assert sum(epochs.values()) < 27 * 9 / 2
    assert max(epochs.values()) == 9
    best_at_rung0 = min(range(27), key=lambda m: (_loss(trainer.msts()[m].params, 0), m))
    assert epochs[best_at_rung0] == 9


class _StopsBest(ASHA):
    """ASHA, plus a user who stops MST ``target`` once it has trained one epoch."""

    target = 0

    def on_epoch_end(self, trainer, result: EpochResult) -> Decision:
        if result.mst_id == self.target:
            trainer.stop(self.target)
        return super().on_epoch_end(trainer, result)


def test_a_stopped_mst_never_gets_another_epoch():
    space = {"x": uniform(0, 1)}
    asha = _StopsBest(_make, space, max_epochs=9, n_msts=12, seed=0)
    best = min(range(12), key=lambda i: asha._point(i)["x"])
    asha.target = best
    trainer = FakeTrainer(asha, n_workers=3, objective_fn=lambda p, e: p["x"]).run()
    assert trainer.status(best) == "stopped"
    assert [e.epoch for e in trainer.log if e.mst_id == best] == [0]
    assert ("extend", best, 3) not in trainer.calls
    assert all(e.start < trainer.stopped_at[best] for e in trainer.log if e.mst_id == best)


def test_fake_trainer_drops_the_epoch_in_flight_of_a_stopped_mst():
    asha = ASHA(_make, {"x": uniform(0, 1)}, max_epochs=3, n_msts=2)
    trainer = FakeTrainer(asha, n_workers=2, objective_fn=lambda p, e: p["x"])
    trainer.run(n_epochs=0)  # on_start: both MSTs in flight
    assert trainer.active() == [0, 1]
    trainer.stop(1)
    assert trainer.active() == [0]
    trainer.run()
    assert [(e.mst_id, e.evaluated) for e in trainer.log if e.mst_id == 1] == [(1, False)]
    assert trainer.results(1) == []
    with pytest.raises(ConfigError, match="MST 1 is stopped and cannot be extended"):
        trainer.extend(1, 3)


@pytest.mark.parametrize(
    "cls", [ASHA, Hyperband, functools.partial(Hyperband, bracket_order="interleaved")]
)
def test_async_halving_is_deterministic_and_resumes_to_the_same_run(cls):
    def run(seed, crash_at=None):
        trainer = FakeTrainer(
            cls(_make, SPACE, max_epochs=9, n_msts=20, seed=seed), 3, _loss, cost=_cost
        )
        if crash_at is not None:
            trainer.run(n_epochs=crash_at)
            trainer = trainer.resume(cls(_make, SPACE, max_epochs=9, n_msts=20, seed=seed))
        return trainer.run()

    a, b, c = run(0), run(0, crash_at=17), run(1)
    assert a.log == b.log and a.calls == b.calls and a.msts() == b.msts()
    assert [m.params for m in a.msts()] != [m.params for m in c.msts()]


def test_asha_proposes_random_search_points():
    from modelhopper.procedures._random import RandomSearch

    asha = ASHA(_make, SPACE, max_epochs=9, n_msts=10, seed=5)
    trainer = FakeTrainer(asha, 2, _loss).run()
    expected = RandomSearch(_make, SPACE, n_msts=10, epochs=9, seed=5).propose()
    assert [m.params for m in trainer.msts()] == expected


# ---------------------------------------------------------------- Hyperband


def test_hyperband_puts_msts_in_brackets_and_promotes_within_them():
    hb = Hyperband(
        _make, SPACE, max_epochs=9, n_msts=34, seed=2, bracket_weights="equal_epochs",
        bracket_order="interleaved",
    )  # fmt: skip
    trainer = FakeTrainer(hb, n_workers=4, objective_fn=_loss, cost=_cost).run()
    assert len(trainer.msts()) == 34
    for kind, mst_id, epochs in trainer.calls:
        bracket = hb.brackets[hb.bracket_cycle[mst_id % len(hb.bracket_cycle)]]
        assert epochs in bracket
        if kind == "add":
            assert epochs == bracket[0]
    firsts = [epochs for kind, _, epochs in trainer.calls if kind == "add"]
    assert firsts.count(1) == 9 + 9 and firsts.count(3) == 5 + 5 and firsts.count(9) == 3 + 3


def test_random_bracket_order_draws_each_msts_bracket_in_the_proportions():
    hb = Hyperband(_make, SPACE, max_epochs=9, n_msts=60, seed=3)
    assert hb.bracket_order == "random"  # the default
    trainer = FakeTrainer(hb, n_workers=4, objective_fn=_loss, cost=_cost).run()
    drawn = [hb._bracket_of(m.id) for m in trainer.msts()]
    for kind, mst_id, epochs in trainer.calls:
        assert epochs in hb.brackets[drawn[mst_id]]
        if kind == "add":
            assert epochs == hb.brackets[drawn[mst_id]][0]
    assert drawn != [hb.bracket_cycle[i % len(hb.bracket_cycle)] for i in range(60)]
    again = Hyperband(_make, SPACE, max_epochs=9, n_msts=60, seed=3, bracket_order="random")
    assert [again._bracket_of(i) for i in reversed(range(60))][::-1] == drawn  # any read order
    many = Hyperband(_make, SPACE, max_epochs=9, n_msts=10, seed=0, bracket_order="random")
    counts = [0, 0, 0]
    for i in range(3100):
        counts[many._bracket_of(i)] += 1
    for count, size in zip(counts, many.bracket_sizes, strict=True):  # 7 : 3 : 1
        assert abs(count / 3100 - size / 11) < 0.03
    assert many.settings()["bracket_order"] == "random"


def test_a_bad_bracket_order_is_refused():
    with pytest.raises(ConfigError, match="bracket_order must be 'random'"):
        Hyperband(_make, SPACE, max_epochs=9, n_msts=10, bracket_order="shuffled")


# ---------------------------------------------------------------- synchronous SHA


def test_successive_halving_waits_for_the_whole_rung():
    sha = SuccessiveHalving(_make, SPACE, max_epochs=9, n_msts=9, seed=4)
    trainer = FakeTrainer(sha, n_workers=4, objective_fn=_loss, cost=_cost).run()
    assert trainer.calls[:9] == [("add", m, 1) for m in range(9)]
    for lower, upper in [(1, 3), (3, 9)]:
        rung_done = max(e.end for e in trainer.log if e.epoch == lower - 1)
        next_rung = [e.start for e in trainer.log if lower <= e.epoch < upper]
        assert next_rung and min(next_rung) >= rung_done
    extends = [(m, epochs) for kind, m, epochs in trainer.calls if kind == "extend"]
    assert [epochs for _, epochs in extends] == [3, 3, 3, 9]
    rung0 = sorted(range(9), key=lambda m: (_loss(trainer.msts()[m].params, 0), m))
    assert [m for m, _ in extends[:3]] == rung0[:3]


def test_asha_does_not_wait_where_successive_halving_does():
    kwargs = {"max_epochs": 9, "n_msts": 9, "seed": 4}
    asha = FakeTrainer(ASHA(_make, SPACE, **kwargs), 4, _loss, cost=_cost).run()
    rung0_done = max(e.end for e in asha.log if e.epoch == 0)
    assert min(e.start for e in asha.log if e.epoch == 1) < rung0_done


@pytest.mark.parametrize(
    ("values", "promoted"),
    [
        ([5, 3, 8, 1, 9, 2, 7, 4, 6], [3, 5, 1]),
        ([5, 3], [1]),  # at least one MST goes on: max(1, floor(2 / 3))
    ],
)
def test_successive_halving_promotes_the_top_once_the_rung_is_complete(values, promoted):
    sha = SuccessiveHalving(_make, {"x": uniform(0, 1)}, max_epochs=3, n_msts=len(values))
    trainer = FakeTrainer(sha, n_workers=2, objective_fn=lambda p, e: 0.0)
    trainer.run(n_epochs=0)  # on_start adds every MST
    for m, value in enumerate(values[:-1]):
        trainer.evaluate(m, value)
    assert not [c for c in trainer.calls if c[0] == "extend"]  # the barrier holds
    trainer.evaluate(len(values) - 1, values[-1])
    assert [c for c in trainer.calls if c[0] == "extend"] == [("extend", m, 3) for m in promoted]
    sha.on_idle(trainer, 2)  # deciding again changes nothing
    assert len([c for c in trainer.calls if c[0] == "extend"]) == len(promoted)


def test_successive_halving_decides_a_rung_whose_last_mst_ended_without_reporting():
    # A stopped (or failed) MST reports nothing: the barrier lets it go when the
    # workers idle, and the rung is decided among those that reported.
    sha = SuccessiveHalving(_make, {"x": uniform(0, 1)}, max_epochs=3, n_msts=4)
    trainer = FakeTrainer(sha, n_workers=2, objective_fn=lambda p, e: 0.0)
    trainer.run(n_epochs=0)
    for m, value in enumerate([5.0, 3.0, 8.0]):
        trainer.evaluate(m, value)
    trainer.stop(3)
    assert not [c for c in trainer.calls if c[0] == "extend"]
    sha.on_idle(trainer, 2)
    assert [c for c in trainer.calls if c[0] == "extend"] == [("extend", 1, 3)]


def test_successive_halving_waits_for_an_mst_added_to_its_rung():
    sha = SuccessiveHalving(_make, {"x": uniform(0, 1)}, max_epochs=3, n_msts=3)
    trainer = FakeTrainer(sha, n_workers=2, objective_fn=lambda p, e: 0.0)
    trainer.run(n_epochs=0)
    trainer.evaluate(0, 5.0)
    trainer.add({"x": 0.5}, epochs=1)  # a human adds one while the rung runs
    trainer.evaluate(1, 3.0)
    trainer.evaluate(2, 8.0)
    assert not [c for c in trainer.calls if c[0] == "extend"]  # MST 3 has not reported
    trainer.evaluate(3, 1.0)
    assert [c for c in trainer.calls if c[0] == "extend"] == [("extend", 3, 3)]


# ---------------------------------------------------------------- stopping mode


def test_stopping_asha_sends_the_top_so_far_on_at_once_and_ends_the_rest():
    asha = ASHA(_make, {"x": uniform(0, 1)}, max_epochs=9, n_msts=20, mode="stopping")
    trainer = FakeTrainer(asha, n_workers=1, objective_fn=lambda p, e: 0.0)
    for i in range(6):
        trainer.add({"x": i / 100}, epochs=1)
    calls = len(trainer.calls)
    # Rung 1 (1 epoch), minimised: the top ceil(n / 3) of the n reports so far go on.
    for mst, value in [(0, 5.0), (1, 6.0), (2, 4.0), (3, 4.5), (4, 9.0), (5, 1.0)]:
        trainer.evaluate(mst, value)
    went_on = [(m, e) for kind, m, e in trainer.calls[calls:] if kind == "extend"]
    # 0: first (1 of 1); 1: 2nd of 2; 2: best of 3; 3: 2nd of 4 (ceil(4/3) = 2);
    # 4: last of 5; 5: best of 6
    assert went_on == [(0, 3), (2, 3), (3, 3), (5, 3)]
    assert [trainer.budget(m) for m in range(6)] == [3, 1, 3, 3, 1, 3]
    # Those that ended stay ended: an idle worker gets a new MST, never a late promotion
    asha.on_idle(trainer, n_idle=1)
    assert trainer.calls[-1] == ("add", 6, 1)


def test_stopping_asha_ends_an_infeasible_mst_at_its_rung():
    asha = ASHA(
        _make, {"x": uniform(0, 1)}, max_epochs=3, n_msts=5, mode="stopping",
        objectives={"acc": "maximize"}, constraints=["size <= 10"],
    )  # fmt: skip
    trainer = FakeTrainer(asha, n_workers=1, objective_fn=lambda p, e: 0.0)
    trainer.add({"x": 0.0}, epochs=1)
    trainer.evaluate(0, {"acc": 0.9, "size": 20.0})  # the first, and the best, but too big
    assert trainer.budget(0) == 1


@pytest.mark.parametrize("cls", [ASHA, Hyperband])
def test_stopping_mode_is_deterministic_resumes_and_finds_the_best(cls):
    def run(crash_at=None):
        make = lambda: cls(_make, SPACE, max_epochs=9, n_msts=30, seed=2, mode="stopping")  # noqa: E731
        trainer = FakeTrainer(make(), 3, _loss, cost=_cost)
        if crash_at is not None:
            trainer.run(n_epochs=crash_at)
            trainer = trainer.resume(make())
        return trainer.run()

    a, b = run(), run(crash_at=23)
    assert a.log == b.log and a.calls == b.calls
    last_add = max(e.start for e in a.log if e.epoch == 0)
    for worker in range(3):  # nobody waits on a rung while MSTs are left to add
        spans = sorted((e.start, e.end) for e in a.log if e.worker == worker)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start == end or start > last_add
    # an MST that goes on does so at once, on its worker: its epochs follow without a gap
    for mst in a.msts():
        spans = sorted((e.start, e.end) for e in a.log if e.mst_id == mst.id)
        assert all(end == start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))
    promotion = FakeTrainer(cls(_make, SPACE, max_epochs=9, n_msts=30, seed=2), 3, _loss,
                            cost=_cost).run()  # fmt: skip
    assert a.calls != promotion.calls
    full = sum(1 for m in a.msts() if a.budget(m.id) == 9)
    assert 0 < full < len(a.msts()) and a.best()[1] >= promotion.best()[1] - 0.5


def test_mode_must_be_promotion_or_stopping():
    with pytest.raises(ConfigError, match="mode must be 'promotion'"):
        ASHA(_make, SPACE, max_epochs=9, n_msts=3, mode="stop")
    assert ASHA(_make, SPACE, max_epochs=9, n_msts=3).settings()["mode"] == "promotion"


def test_a_hyperband_pickled_before_bracket_weights_existed_reports_its_proportions():
    hb = Hyperband(_make, SPACE, max_epochs=9, n_msts=10, bracket_weights="equal_epochs")
    del hb.bracket_weights  # as unpickled from a run started before the option
    assert hb.settings()["bracket_weights"] == "equal_epochs"


class _Results:
    """A trainer as far as ``_Reports`` reads one: its MSTs and its results list."""

    def __init__(self, results: list[EpochResult]) -> None:
        self.list = results

    def results(self) -> list[EpochResult]:
        return list(self.list)  # a copy, as the driver returns, of the same objects


def _full_read(results: list[EpochResult]) -> dict[int, dict[int, dict[str, float]]]:
    out: dict[int, dict[int, dict[str, float]]] = defaultdict(dict)
    for r in results:
        out[r.mst_id][r.epoch] = dict(r.metrics)
    return dict(out)


def test_reports_read_only_new_results_and_read_all_again_when_the_list_is_another():
    from modelhopper.procedures._hyperband import _Reports

    first = [EpochResult(0, 0, {"v": 1.0}), EpochResult(1, 0, {"v": 2.0})]
    trainer = _Results(list(first))
    reports = _Reports()
    assert reports.of(trainer, []) == _full_read(first)  # type: ignore[arg-type]
    trainer.list += [EpochResult(0, 1, {"v": 3.0}), EpochResult(0, 1, {"v": 4.0})]  # re-evaluated
    assert reports.of(trainer, []) == _full_read(trainer.list)  # type: ignore[arg-type]
    assert reports.of(trainer, [])[0] == {0: {"v": 1.0}, 1: {"v": 4.0}}  # type: ignore[arg-type]
    # another trainer (a resumed run): equal results, other objects, one fewer epoch
    other = _Results([EpochResult(r.mst_id, r.epoch, dict(r.metrics)) for r in first])
    assert reports.of(other, []) == _full_read(first)  # type: ignore[arg-type]
    # results taken back: the last-read one moved
    other.list = [other.list[1], EpochResult(2, 0, {"v": 5.0})]
    assert reports.of(other, []) == _full_read(other.list)  # type: ignore[arg-type]


def test_reports_keep_each_epochs_reports_and_each_msts_place_through_rereads():
    from modelhopper.procedures._hyperband import _Reports

    msts = [MST(i, {}, i) for i in (0, 1, 2)]
    trainer = _Results([EpochResult(0, 0, {"v": 1.0}), EpochResult(2, 0, {"v": 2.0})])
    reports = _Reports()
    reports.of(trainer, msts[:2])  # type: ignore[arg-type]
    assert [reports.place(i) for i in (0, 1)] == [0, 1]
    trainer.list += [EpochResult(2, 0, {"v": 5.0}), EpochResult(0, 1, {"v": 3.0})]
    metrics = reports.of(trainer, msts)  # type: ignore[arg-type]
    assert reports.place(2) == 2 and set(metrics) == {0, 1, 2} and metrics[1] == {}
    assert reports.at(0) == {0: {"v": 1.0}, 2: {"v": 5.0}}  # the re-evaluation replaced
    assert reports.at(1) == {0: {"v": 3.0}} and reports.at(7) == {}
    # another run's MSTs (ids 5, 9): placed afresh, not appended to the old places
    other = _Results([EpochResult(9, 0, {"v": 4.0})])
    assert set(reports.of(other, [MST(5, {}, 5), MST(9, {}, 9)])) == {5, 9}  # type: ignore[arg-type]
    assert (reports.place(5), reports.place(9)) == (0, 1)
    assert reports.at(0) == {9: {"v": 4.0}}


def test_in_top_asks_a_subclass_own_rank():
    """The one-objective count stands in for ``rank`` only where ``rank`` is the base's."""

    class Reversed(ASHA):
        def rank(self, reports):
            return [m for m in reversed(super().rank(reports))]

    reports = [(0, {"val_loss": 0.1}), (1, {"val_loss": 0.5}), (2, {"val_loss": 0.9})]
    plain = ASHA(_make, SPACE, max_epochs=9, n_msts=3, metric="val_loss", direction="minimize")
    turned = Reversed(_make, SPACE, max_epochs=9, n_msts=3, metric="val_loss", direction="minimize")
    assert [plain.in_top(reports, m, 1) for m in (0, 1, 2)] == [True, False, False]
    assert [turned.in_top(reports, m, 1) for m in (0, 1, 2)] == [False, False, True]
