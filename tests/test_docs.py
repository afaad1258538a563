"""Every ```python block in README.md and docs/*.md runs as written.

A block is a whole program: it runs as ``python block.py`` with this interpreter,
in a fresh temp folder, and fails the test if it exits non-zero (its stderr is
shown). A block whose first line is a comment naming ``modelhopper run`` (e.g.
``# spec.py: run it with modelhopper run spec.py``) is a spec file instead: it
runs as ``modelhopper run spec.py --workers 2``. A block that starts Ray holds
the Ray lock (one Ray cluster at a time across pytest-xdist workers). Shell
sessions and fragments that cannot run on their own are not ```python blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 300  # seconds per block; each runs in seconds on digits
USES_RAY = re.compile(r"""executor=["']ray|RayExecutor|^\s*import ray\b""", re.MULTILINE)


def python_blocks(path: Path) -> list[tuple[str, str]]:
    """``(id, code)`` of each ```python block in ``path``; id = file:L<line of the fence>."""
    blocks: list[tuple[str, str]] = []
    start: int | None = None
    lines: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if start is None and line.strip() == "```python":
            start, lines = number, []
        elif start is not None and line.strip() == "```":
            blocks.append((f"{path.relative_to(ROOT)}:L{start}", "\n".join(lines) + "\n"))
            start = None
        elif start is not None:
            lines.append(line)
    return blocks


BLOCKS = [block for path in DOCS for block in python_blocks(path)]


def is_spec_file(code: str) -> bool:
    first = code.lstrip().splitlines()[0]
    return first.startswith("#") and "modelhopper run" in first


def _run(code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    if is_spec_file(code):
        script = folder / "spec.py"
        command = [str(Path(sys.executable).with_name("modelhopper")), "run", str(script),
                   "--workers", "2"]  # fmt: skip
    else:
        script = folder / "block.py"
        command = [sys.executable, str(script)]
    script.write_text(code)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MPLBACKEND": "Agg"}
    return subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def _block_id(where: str, code: str) -> str:
    # Blocks that start Ray say so in their id: make test runs them with the other Ray tests.
    return f"{where}-ray" if USES_RAY.search(code) else where


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[_block_id(*block) for block in BLOCKS])
def test_doc_block_runs_as_written(where, code, tmp_path, request):
    if USES_RAY.search(code):
        pytest.importorskip("ray", reason="Ray is an extra: pip install 'modelhopper[ray]'")
        with request.getfixturevalue("ray_lock")():
            done = _run(code, tmp_path)
    else:
        done = _run(code, tmp_path)
    assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stderr[-4000:]}"


def test_docs_have_python_blocks_and_a_spec_file():
    """The collection above found what it should (no test that cannot fail)."""
    where = {w.split(":")[0] for w, _ in BLOCKS}
    assert {"README.md", "docs/ray.md"} <= where
    assert sum(is_spec_file(code) for _, code in BLOCKS) == 1
