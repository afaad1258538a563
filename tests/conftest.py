from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_in_tmp_dir(tmp_path_factory):
    """Module-scoped fixtures run before any test's own folder: give them one too."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session-cwd"))
    yield
    os.chdir(before)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """Default stores and run directories (./modelhopper-runs) land in the test's own folder."""
    monkeypatch.chdir(tmp_path)
