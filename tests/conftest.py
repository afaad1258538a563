from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """Default stores and run directories (./modelhopper-runs) land in the test's own folder."""
    monkeypatch.chdir(tmp_path)
