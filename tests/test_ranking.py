"""One rule for "better": every view that ranks MSTs names the same best one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import modelhopper as mh
from modelhopper._plot import _draw_curves
from modelhopper._ranking import Direction, best_epoch, better, direction_of, ranked, score
from modelhopper.result import MSTResult, MSTStatus, Result
from modelhopper.server._msts import MSTSummary, choose, summarise


@pytest.mark.parametrize(
    ("value", "direction", "expected"),
    [
        (0.5, "maximize", 0.5),
        (0.5, "minimize", -0.5),
        (0.5, True, 0.5),
        (0.5, None, -0.5),  # the default direction is minimize, as procedures' default
        (float("nan"), "maximize", -math.inf),
        (math.inf, "minimize", -math.inf),
        (None, "maximize", -math.inf),
        (True, "maximize", -math.inf),  # a bool is not a metric value
    ],
)
def test_score(value, direction, expected) -> None:
    assert score(value, direction) == expected


def test_better_and_ranked() -> None:
    assert better(0.2, 0.3, "minimize") and not better(0.3, 0.2, "minimize")
    assert better(0.2, None, "minimize") and not better(float("nan"), None, "maximize")
    assert not better(0.3, 0.3, Direction.MAXIMIZE)  # strictly better only
    items = [(3, 0.5), (1, float("nan")), (2, 0.5), (0, 0.9)]
    order = ranked(items, lambda i: i[1], lambda i: i[0], "maximize")
    assert [i[0] for i in order] == [0, 2, 3, 1]  # ties by id, NaN last
    assert best_epoch([{"m": 0.3}, {"m": 0.1}, {"m": 0.1}], "m", "minimize") == 1
    assert best_epoch([{"m": float("nan")}], "m", "minimize") is None
    assert direction_of(None) is Direction.MINIMIZE
    assert mh.Direction is Direction  # the public name is the ground floor's


def _history(mst_id: int, losses: list[float]) -> list[dict]:
    return [{"mst_id": mst_id, "epoch": e, "val_loss": v} for e, v in enumerate(losses)]


def test_result_plot_and_dashboard_name_the_same_best_mst() -> None:
    # MST 0 has the best epoch of all (0.1) but ends worse than MST 1 (0.9 vs 0.4).
    histories = {0: [0.1, 0.9], 1: [0.5, 0.4], 2: [0.6, float("nan")]}
    msts = [
        MSTResult(i, {"i": i}, 0, MSTStatus.COMPLETED, _history(i, losses))
        for i, losses in histories.items()
    ]
    result = Result(msts, "val_loss", "minimize", Path("."), None)
    assert result.best.id == 1
    assert list(result.to_dataframe()["mst_id"]) == [1, 0, 2]
    assert result.msts[0].best_metrics("val_loss", False)["val_loss"] == 0.1  # reported

    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots()
    _draw_curves(ax, result, "val_loss", top=1)
    assert [line.get_label() for line in ax.get_lines()] == ["MST 1: i=1"]
    plt.close(figure)

    summaries = []
    for i, losses in histories.items():
        summary = MSTSummary(i, {"i": i}, "completed", None, False, 0, 2)
        summarise(summary, {e: {"val_loss": v} for e, v in enumerate(losses)}, "val_loss", False)
        summaries.append(summary)
    assert [s.mst_id for s in choose(summaries, None, top=1, maximize=False)] == [1]
    assert (summaries[0].best, summaries[0].best_epoch) == (0.1, 0)  # shown beside the rank
