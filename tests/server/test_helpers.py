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
