"""The README's quick start runs in a real Jupyter kernel, pasted into one notebook cell.

The kernel is this interpreter's ipykernel, through a kernelspec installed into a
temp folder (found through JUPYTER_PATH), so no other Python can answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"
KERNEL = "modelhopper-test"

CHECKS = f"""
import sys
assert sys.executable == {sys.executable!r}, sys.executable
assert len(result.msts) == 8 and len(df) == 8
assert all(m.status is mh.MSTStatus.COMPLETED for m in result.msts)
assert set(result.best.metrics) >= {{"train_loss", "val_loss", "val_accuracy"}}
assert 0 < result.best.metrics["val_accuracy"] <= 1
assert isinstance(model, torch.nn.Module)
assert result.stats.data_copies == 2.0  # small data: held whole by both workers
"""


def quick_start() -> str:
    """The first ```python block under the README's 'Using it from Python'."""
    section = README.read_text().split("## Using it from Python", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for this interpreter in a temp prefix; Jupyter's own folders in tmp too."""
    prefix = tmp_path / "jupyter"
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    folders = {"JUPYTER_DATA_DIR": "data", "JUPYTER_CONFIG_DIR": "config",
               "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython"}  # fmt: skip
    for name, folder in folders.items():
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv("MPLBACKEND", "Agg")


def test_readme_quick_start_runs_in_a_jupyter_kernel(kernel_env, tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(quick_start()), nbformat.v4.new_code_cell(CHECKS)]
    client = NotebookClient(
        notebook, kernel_name=KERNEL, timeout=300, startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )  # fmt: skip
    client.execute()  # raises CellExecutionError with the cell's traceback
    printed = "".join(o.get("text", "") for o in notebook.cells[0].outputs)
    assert "val_accuracy" in printed  # the README prints the best MST's metrics
    assert (tmp_path / "modelhopper-runs" / "modelhopper.db").is_file()
