"""Several objectives and constraints: Pareto fronts, crowding, feasibility, and the
procedures, results and runs that use them."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper._pareto import (
    Constraint,
    crowding_distances,
    dominates,
    non_dominated_fronts,
    pareto_ranked,
    ranks_within,
)
from modelhopper._ranking import ranked, score
from modelhopper.procedures._hyperband import ASHA, SuccessiveHalving
from modelhopper.result import MSTResult, MSTStatus, Result
from modelhopper.space import uniform
from modelhopper.testing import FakeTrainer

TWO = {"acc": "maximize", "size": "minimize"}


def test_dominance_and_fronts():
    assert dominates((2, 2), (1, 2)) and not dominates((2, 2), (2, 2))
    assert not dominates((3, 1), (1, 3)) and not dominates((1, 3), (3, 1))
    points = [(1, 1), (3, 1), (2, 2), (1, 3), (2, 1), (0, 0), (-math.inf, 5)]
    # (2, 1) is beaten by (3, 1) and (2, 2); (1, 1) by (2, 1) as well: a front below it
    assert non_dominated_fronts(points) == [[1, 2, 3, 6], [4], [0], [5]]
    assert non_dominated_fronts([]) == []


def test_one_objective_fronts_are_its_values_in_order_as_the_general_sort_finds():
    rng = random.Random(3)
    for _ in range(200):
        values = [
            rng.choice([-math.inf, 0.0, 0.5, 1.0, rng.random()]) for _ in range(rng.randint(1, 30))
        ]
        fast = non_dominated_fronts([(v,) for v in values])
        general = non_dominated_fronts([(v, 0.0) for v in values])  # one free coordinate
        assert [sorted(f) for f in fast] == [sorted(f) for f in general]
        assert all(values[f[0]] > values[g[0]] for f, g in zip(fast, fast[1:], strict=False))


def test_crowding_prefers_the_extremes_and_the_spread_out():
    points = [(0, 4), (1, 3), (2, 2), (3, 1), (4, 0), (3.9, 0.1)]
    front = [0, 1, 2, 3, 4, 5]
    distance = crowding_distances(points, front)
    assert distance[0] == distance[4] == math.inf
    assert distance[2] == pytest.approx(1.0)  # (3-1)/4 on both axes, halved twice
    assert distance[5] < distance[3] < distance[2]  # crowded near (4, 0)
    assert crowding_distances([(1, 1), (1, 1), (1, 1)], [0, 1, 2]) == {0: 0, 1: 0, 2: 0}


def _metrics(rows):
    return [(i, dict(zip(("acc", "size"), row, strict=True))) for i, row in enumerate(rows)]


def test_pareto_ranked_orders_by_feasibility_front_crowding_then_id():
    rows = [(0.9, 500), (0.8, 100), (0.9, 500), (0.5, 50), (0.7, 300), (0.95, 900)]
    items = _metrics(rows)
    order = [i for i, _ in pareto_ranked(items, lambda r: r[1], lambda r: r[0], TWO)]
    # front 0: 0, 1, 2, 3, 5 (0 and 2 tie); front 1: 4 (dominated by 1)
    assert order[-1] == 4 and sorted(order[:5]) == [0, 1, 2, 3, 5]
    assert order[:2] == [3, 5]  # the extremes (smallest, most accurate) come first
    assert order.index(0) < order.index(2)  # equal points: the lower id first

    cap = [Constraint.parse("size <= 400")]
    order = [i for i, _ in pareto_ranked(items, lambda r: r[1], lambda r: r[0], TWO, cap)]
    assert order[:3] == [1, 3, 4]  # feasible (size <= 400) first: front {1, 3}, then 4
    assert order[3:] == [0, 2, 5]  # infeasible last, least violation (100, 100, 500) first


def test_one_objective_ranks_as_the_single_objective_rule():
    values = [0.3, float("nan"), 0.3, 0.9, 0.1, 0.3, None]
    items = list(enumerate(values))
    for direction in ("maximize", "minimize"):
        expected = ranked(items, lambda i: i[1], lambda i: i[0], direction)
        got = pareto_ranked(items, lambda i: {"m": i[1]}, lambda i: i[0], {"m": direction})
        assert got == expected


def test_one_objective_ranks_as_fronts_and_crowding_would():
    """pareto_ranked sorts one objective by value; the general order (fronts of equal
    values, crowding, then id) must come out the same, ties and missing values too."""
    rng = random.Random(5)
    for _ in range(200):
        values = [rng.choice([None, math.nan, -math.inf, 0.0, 0.5, rng.random()])
                  for _ in range(rng.randint(1, 40))]  # fmt: skip
        items = list(enumerate(values))
        rng.shuffle(items)  # ties go by id, not by the order given
        for direction in ("maximize", "minimize"):
            got = pareto_ranked(items, lambda i: {"m": i[1]}, lambda i: i[0], {"m": direction})
            points = [(score(v, direction), 0.0) for v in values]  # one free coordinate
            general = []
            for front in non_dominated_fronts(points):
                crowding = crowding_distances(points, front)
                general += sorted(front, key=lambda i: (-crowding[i], i))
            assert [i for i, _ in got] == general


def test_ranks_within_answers_as_the_top_k_of_the_full_ranking():
    """ASHA's stopping rule asks whether one report is in the top k; the count it uses
    for one objective must agree with pareto_ranked, ties, missing values, several
    objectives and constraints included."""
    rng = random.Random(7)
    under = [Constraint.parse("size <= 0.6")]
    for trial in range(80):
        n = rng.randint(1, 30)
        items = [(i, {"m": rng.choice([None, math.nan, 0.5, rng.random()]),
                      "size": rng.random()}) for i in range(n)]  # fmt: skip
        rng.shuffle(items)
        for objectives, constraints in (({"m": "maximize"}, []), ({"m": "minimize"}, []),
                                        ({"m": "maximize"}, under), (TWO_M, [])):  # fmt: skip
            full = pareto_ranked(items, lambda i: i[1], lambda i: i[0], objectives, constraints)
            for k in sorted({0, 1, n // 3, -(-n // 3), n}):
                top = {i for i, _ in full[:k]}
                for item in items:
                    got = ranks_within(
                        items, item, k, lambda i: i[1], lambda i: i[0], objectives, constraints
                    )
                    assert got == (item[0] in top), (trial, objectives, k, item)


TWO_M = {"m": "maximize", "size": "minimize"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("val_n_params <= 100000", ("val_n_params", "<=", 100000.0)),
     ("acc>=0.5", ("acc", ">=", 0.5)), ("size <= 1_000", ("size", "<=", 1000.0))],
)  # fmt: skip
def test_constraints_parse_and_measure_violation(text, expected):
    constraint = Constraint.parse(text)
    assert (constraint.metric, constraint.op, constraint.bound) == expected
    name, op, bound = expected
    inside = bound - 1 if op == "<=" else bound + 1
    outside = bound + 2 if op == "<=" else bound - 2
    assert constraint.violation({name: inside}) == 0
    assert constraint.violation({name: outside}) == 2
    assert constraint.violation({}) == math.inf == constraint.violation({name: float("nan")})


@pytest.mark.parametrize("text", ["size < 3", "size <= big", "<= 3", 3, "size <= inf"])
def test_a_bad_constraint_is_refused_with_the_form_to_use(text):
    with pytest.raises(ValueError, match=r"'metric <= number' or 'metric >= number'"):
        Constraint.parse(text)


def _asha(**kwargs):
    return ASHA(lambda p: None, {"x": uniform(0, 1)}, max_epochs=3, reduction_factor=3,
                n_msts=9, **kwargs)  # fmt: skip


def _scripted(procedure, rows):
    trainer = FakeTrainer(procedure, n_workers=3, objective_fn=lambda p, e: 0.0)
    for i, (acc, size) in enumerate(rows):
        trainer.add({"x": i / 100}, epochs=1)
        trainer.evaluate(i, {"acc": acc, "size": size}, notify=False)
    return trainer


ROWS = [(0.6, 50), (0.9, 400), (0.7, 300), (0.8, 100), (0.5, 500),
        (0.4, 60), (0.85, 900), (0.3, 10), (0.75, 90)]  # fmt: skip


def test_asha_promotes_by_pareto_rank():
    asha = _asha(objectives=TWO)
    trainer = _scripted(asha, ROWS)
    asha.on_idle(trainer, n_idle=9)
    # front 0: 0, 1, 3, 7, 8 (6 is beaten by 1: less accurate and larger); the extremes
    # 1 (most accurate) and 7 (smallest) first, then the least crowded, 3 (crowding
    # 1.05 against 0.96 for 0 and 0.46 for 8); 9 // 3 = 3 promotions
    assert trainer.calls[9:] == [("extend", 1, 3), ("extend", 7, 3), ("extend", 3, 3)]
    assert asha.settings()["objectives"] == TWO
    assert asha.required_metrics() == ["acc", "size"]


def test_constraints_keep_infeasible_msts_from_promotion():
    asha = _asha(objectives=TWO, constraints=["size <= 95"])
    trainer = _scripted(asha, ROWS)
    asha.on_idle(trainer, n_idle=9)
    # feasible: 0, 7, 8 (size <= 95): all promoted, nothing infeasible is
    assert sorted(c[1] for c in trainer.calls[9:]) == [0, 7, 8]
    assert asha.required_metrics() == ["acc", "size"]

    sha = SuccessiveHalving(lambda p: None, {"x": uniform(0, 1)}, max_epochs=3,
                            reduction_factor=3, n_msts=9, objectives=TWO,
                            constraints=["size <= 1"])  # fmt: skip
    trainer = _scripted(sha, ROWS)
    sha.on_idle(trainer, n_idle=9)
    assert [c for c in trainer.calls if c[0] == "extend"] == []  # nothing feasible


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objectives": TWO, "metric": "acc"}, r"give metric= and direction=, or objectives="),
        ({"objectives": {}}, r"objectives must map metric names"),
        ({"objectives": {"acc": "up"}}, r"objective 'acc': direction must be 'maximize'"),
        ({"constraints": ["size < 3"]}, r"'metric <= number'"),
        ({"constraints": 3}, r"constraints must be a list"),
    ],
)
def test_bad_objectives_are_refused(kwargs, message):
    with pytest.raises(mh.ConfigError, match=message):
        _asha(**kwargs)


def _result(rows, **kwargs):
    msts = [
        MSTResult(id=i, params={}, seed=i, status=MSTStatus.COMPLETED,
                  history=[{"epoch": 0, "acc": acc, "size": size}] if acc is not None else [])
        for i, (acc, size) in enumerate(rows)
    ]  # fmt: skip
    return Result(msts=msts, metric="acc", direction="maximize", run_dir=Path("."),
                  stats=None, objectives=dict(TWO), **kwargs)  # fmt: skip


def test_result_pareto_front():
    result = _result([*ROWS, (None, None)])
    front = result.pareto_front()
    assert [m.id for m in front] == [1, 7, 3, 0, 8]  # as ASHA ranks them
    assert result.best.id == 1  # best: the first objective alone
    capped = _result(ROWS, constraints=["size <= 95"])
    assert [m.id for m in capped.pareto_front()] == [7, 8, 0]
    assert _result([(None, None)]).pareto_front() == []
    single = Result(msts=_result(ROWS).msts, metric="acc", direction="maximize",
                    run_dir=Path("."), stats=None)  # fmt: skip
    assert [m.id for m in single.pareto_front()] == [1]


def _estimator(params):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, params["hidden"]), nn.ReLU(),
                          nn.Linear(params["hidden"], 10))  # fmt: skip
    return mh.Estimator(model, torch.optim.Adam(model.parameters(), lr=params["lr"]),
                        nn.CrossEntropyLoss(), metrics=["accuracy", "n_params"],
                        batch_size=64)  # fmt: skip


@pytest.mark.slow
def test_a_run_on_two_objectives_under_a_constraint(tmp_path):
    space = {"hidden": mh.choice([4, 16, 64]), "lr": mh.loguniform(1e-3, 3e-2)}
    asha = mh.ASHA(_estimator, space, max_epochs=3, n_msts=8, seed=1,
                   objectives={"val_accuracy": "maximize", "val_n_params": "minimize"},
                   constraints=["val_n_params <= 2000"])  # fmt: skip
    result = asha.fit(mh.datasets.digits(), n_workers=2, run_dir=tmp_path / "run",
                      store=f"sqlite:///{tmp_path}/runs.db")  # fmt: skip
    sizes = {4: 64 * 4 + 4 + 4 * 10 + 10, 16: 64 * 16 + 16 + 16 * 10 + 10}
    for mst in result.msts:  # n_params is reported exactly, per epoch
        expected = sizes.get(mst.params["hidden"], 64 * 64 + 64 + 64 * 10 + 10)
        assert all(row["val_n_params"] == expected for row in mst.history)
    front = result.pareto_front()
    assert front and all(m.metrics["val_n_params"] <= 2000 for m in front)
    for m in front:  # nothing feasible beats a member of the front on both objectives
        for other in result.msts:
            if other.history and other.metrics["val_n_params"] <= 2000:
                assert not (
                    other.metrics["val_accuracy"] > m.metrics["val_accuracy"]
                    and other.metrics["val_n_params"] < m.metrics["val_n_params"]
                )
    promoted = [m for m in result.msts if m.epochs_done > 1]
    assert all(m.params["hidden"] != 64 for m in promoted)  # infeasible: never promoted
    assert result.objectives == {"val_accuracy": "maximize", "val_n_params": "minimize"}


def test_tpe_search_asks_and_tells_every_objective():
    pytest.importorskip("optuna")
    tpe = mh.TPESearch(lambda p: None, {"x": uniform(0, 1)}, n_msts=12, epochs=1, seed=0,
                       n_startup_trials=4, objectives=TWO)  # fmt: skip
    trainer = FakeTrainer(
        tpe, n_workers=2, objective_fn=lambda p, e: {"acc": p["x"], "size": (p["x"] - 0.2) ** 2}
    )
    trainer.run()  # fmt: skip
    assert tpe.study is not None and len(tpe.study.directions) == 2
    trials = tpe.study.get_trials(deepcopy=False)
    assert len(trials) == 12 and all(len(t.values) == 2 for t in trials)
    for trial, mst in zip(trials, trainer.msts(), strict=True):  # told the raw metrics
        assert trial.values == [mst.params["x"], (mst.params["x"] - 0.2) ** 2]
    front = {t.number for t in tpe.study.best_trials}  # Optuna's front is ours
    ours = pareto_ranked(trainer.msts(), lambda m: trainer.results(m.id)[-1].metrics,
                         lambda m: m.id, TWO)  # fmt: skip
    points = [tuple(score for score in (m.params["x"], -((m.params["x"] - 0.2) ** 2)))
              for m in trainer.msts()]  # fmt: skip
    assert front == set(non_dominated_fronts(points)[0])
    assert {m.id for m in ours[: len(front)]} == front


def test_optuna_procedures_refuse_constraints():
    pytest.importorskip("optuna")
    with pytest.raises(mh.ConfigError, match="TPESearch does not take constraints"):
        mh.TPESearch(lambda p: None, {"x": uniform(0, 1)}, n_msts=4, epochs=1,
                     objectives=TWO, constraints=["size <= 1"])  # fmt: skip


def test_pbt_clones_only_feasible_members():
    pbt = mh.PBT(lambda p: None, {"x": uniform(0, 1)}, population_size=8, epochs=6,
                 interval=2, quantile=0.5, seed=0, objectives=TWO,
                 constraints=["size <= 0.03"])  # fmt: skip
    # accuracy grows with x, but only x <= 0.03 meets the size constraint: one member,
    # fewer than the top half, so ranking alone would pick infeasible parents. Larger
    # MSTs are slower: they report after the small ones and land in the bottom half.
    trainer = FakeTrainer(
        pbt,
        n_workers=8,
        cost=lambda p: 1 + p["x"],
        objective_fn=lambda p, e: {"acc": p["x"], "size": p["x"]},
    )
    trainer.run()  # fmt: skip
    clones = [m for m in trainer.msts() if m.parent is not None]
    assert clones  # PBT exploited
    params = {m.id: m.params for m in trainer.msts()}
    assert all(params[m.parent]["x"] <= 0.03 for m in clones)  # parents are feasible
