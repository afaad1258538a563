"""The dashboard's plain helpers: downsampling epochs, and hops of runs without hop events."""

from __future__ import annotations

import pytest

from modelhopper.server._msts import spread
from modelhopper.store._timeline import derive_hops


@pytest.mark.parametrize(
    ("n", "max_points", "expected"),
    [(0, 5, []), (3, 5, [0, 1, 2]), (5, 5, [0, 1, 2, 3, 4]), (10, 2, [0, 9]), (10, 1, [9]),
     (101, 5, [0, 25, 50, 75, 100])],
)  # fmt: skip
def test_spread_keeps_first_and_last(n, max_points, expected):
    assert spread(n, max_points) == expected


def test_derive_hops_follows_the_driver_rule():
    # (mst, worker): a state moves when the MST ran elsewhere before and this worker's
    # last visit was another MST's; a first visit or a repeat on the same worker is no hop.
    order = [(0, 0), (1, 1), (0, 0), (0, 1), (1, 0), (1, 0), (0, 0)]
    visits = [{"mst_id": m, "worker": w, "hop": None} for m, w in order]
    visits[-1]["hop"] = False  # recorded by the driver: kept
    derive_hops(visits)
    assert [v["hop"] for v in visits] == [False, False, False, True, True, False, False]


def test_mark_pareto_front_flags_the_feasible_non_dominated_msts():
    from modelhopper.server._msts import MSTSummary, mark_pareto_front

    rows = {0: (0.6, 50), 1: (0.9, 400), 2: (0.7, 300), 3: (0.8, 100), 4: None}
    summaries = []
    for mst_id, row in rows.items():
        summary = MSTSummary(mst_id, {}, "running", None, False, 0, 3)
        if row is not None:
            summary.epochs_done, summary.metrics = 1, {"acc": row[0], "size": row[1]}
        summaries.append(summary)
    two = {"acc": "maximize", "size": "minimize"}
    mark_pareto_front(summaries, two, [])
    assert [s.mst_id for s in summaries if s.pareto] == [0, 1, 3]  # 2 is beaten by 3
    mark_pareto_front(summaries, two, ["size <= 200"])
    assert [s.mst_id for s in summaries if s.pareto] == [0, 3]
    mark_pareto_front(summaries, {"acc": "maximize"}, [])
    assert not any(s.pareto for s in summaries)  # one objective: no front is shown
