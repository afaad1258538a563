"""Every example in examples/ runs end to end in its --smoke-test mode."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_runs_in_smoke_mode(example, tmp_path):
    if example.stem in ("text_transfer", "lora_glosses"):
        _require_text_transfer()
    done = subprocess.run(
        [sys.executable, str(example), "--smoke-test"], cwd=tmp_path, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best" in done.stdout or "MST" in done.stdout


def _require_text_transfer() -> None:
    """The text example needs wordnet-base (apt) and the transfer extra (pip)."""
    missing = []
    if not Path("/usr/share/wordnet/data.noun").is_file():
        missing.append("WordNet: sudo apt-get install wordnet-base (make data installs it)")
    if importlib.util.find_spec("sentence_transformers") is None:
        missing.append("the transfer extra: pip install 'modelhopper[transfer]'")
    if missing and os.environ.get("MODELHOPPER_TEST_REQUIRE_DATA") == "1":
        pytest.fail("; ".join(missing))
    if missing:
        pytest.skip("; ".join(missing))


def test_there_are_examples():
    assert len(EXAMPLES) >= 5
