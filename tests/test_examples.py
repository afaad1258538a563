"""Every example in examples/ runs end to end in its --smoke-test mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_runs_in_smoke_mode(example, tmp_path):
    done = subprocess.run(
        [sys.executable, str(example), "--smoke-test"], cwd=tmp_path, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best" in done.stdout or "MST" in done.stdout


def test_there_are_examples():
    assert len(EXAMPLES) >= 5
