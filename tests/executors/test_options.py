"""The options every executor shares are checked once, the same way, before anything starts."""

from __future__ import annotations

import pytest

import modelhopper as mh

BAD = [
    ({"threads_per_worker": 0}, r"threads_per_worker must be an int >= 1, got 0"),
    ({"threads_per_worker": 1.5}, r"threads_per_worker must be an int >= 1, got 1.5"),
    ({"max_restarts": -1}, r"max_restarts must be an int >= 0, got -1"),
    ({"max_restarts": "3"}, r"max_restarts must be an int >= 0, got '3'"),
    ({"restart_window": 0}, r"restart_window must be a number of seconds > 0, got 0"),
    ({"start_timeout": 0}, r"start_timeout must be > 0 seconds, got 0"),
    ({"start_timeout": "60"}, r"start_timeout must be > 0 seconds, got '60'"),
]


@pytest.mark.parametrize("executor", [mh.LocalExecutor, mh.RayExecutor])
@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_shared_options_are_refused_alike(executor, options, message):
    with pytest.raises(mh.ConfigError, match=message):
        executor(**options)
