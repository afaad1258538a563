"""The run's procedure file: the user's modules travel with it, or their files are named."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import textwrap

import pytest

import modelhopper as mh
from modelhopper._procedure_file import (
    MODULES_FILE,
    dump_procedure,
    load_procedure,
    write_procedure,
)

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn
    import modelhopper as mh
    {imports}

    class Net(nn.Sequential):
        def __init__(self, hidden):
            super().__init__(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def make_estimator(p):
        model = Net(p["hidden"] * {width})
        return mh.Estimator(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                            loss=nn.CrossEntropyLoss())
    """
)


@pytest.fixture
def code(tmp_path, monkeypatch):
    """A folder of the user's modules, importable in this test only."""
    folder = tmp_path / "code"
    folder.mkdir()
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])  # undone after the test
    for name in ("pf_common", "pf_helpers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield folder
    for name in ("pf_common", "pf_helpers"):
        sys.modules.pop(name, None)


def _forget(folder):
    """As in a fresh process started elsewhere: the modules are not imported, not on the path."""
    for name in ("pf_common", "pf_helpers"):
        sys.modules.pop(name, None)
    sys.path[:] = [p for p in sys.path if p != str(folder)]


def test_the_factorys_module_goes_by_value(code, tmp_path):
    (code / "pf_common.py").write_text(FACTORY.format(imports="", width="2"))
    common = importlib.import_module("pf_common")
    search = mh.GridSearch(common.make_estimator, {"hidden": 8}, epochs=1)
    blob, modules = dump_procedure(search)
    assert modules == {"pf_common": str(code / "pf_common.py")}
    write_procedure(tmp_path, blob, modules)
    assert json.loads((tmp_path / MODULES_FILE).read_text()) == modules
    _forget(code)
    shutil.rmtree(code)  # even the file is gone: the code is in the procedure file
    loaded = load_procedure(tmp_path)
    estimator = loaded.make_estimator({"hidden": 8})
    assert estimator.model[0].out_features == 16
    assert "pf_common" not in sys.modules


def test_modules_it_imports_are_found_where_they_were(code, tmp_path):
    (code / "pf_helpers.py").write_text("WIDTH = 3\n")
    (code / "pf_common.py").write_text(
        FACTORY.format(imports="import pf_helpers", width="pf_helpers.WIDTH")
    )
    common = importlib.import_module("pf_common")
    blob, modules = dump_procedure(mh.GridSearch(common.make_estimator, {"hidden": 8}, epochs=1))
    assert modules == {
        "pf_common": str(code / "pf_common.py"),
        "pf_helpers": str(code / "pf_helpers.py"),
    }
    write_procedure(tmp_path, blob, modules)
    _forget(code)
    loaded = load_procedure(tmp_path)  # puts code/ on sys.path, after the rest
    assert sys.path[-1] == str(code)
    assert loaded.make_estimator({"hidden": 8}).model[0].out_features == 24


def test_a_module_that_is_gone_is_named_by_its_file(code, tmp_path):
    (code / "pf_helpers.py").write_text("WIDTH = 3\n")
    (code / "pf_common.py").write_text(
        FACTORY.format(imports="import pf_helpers", width="pf_helpers.WIDTH")
    )
    common = importlib.import_module("pf_common")
    write_procedure(
        tmp_path, *dump_procedure(mh.GridSearch(common.make_estimator, {"hidden": 8}, epochs=1))
    )
    _forget(code)
    (code / "pf_helpers.py").unlink()
    with pytest.raises(
        mh.StoreError,
        match=r"cannot load the run's procedure from .*procedure.pkl: it needs module "
        r"'pf_helpers', recorded as .*/code/pf_helpers.py, which is missing; put the file "
        r"back there \(or make module 'pf_helpers' importable, e.g. with PYTHONPATH\)",
    ):
        load_procedure(tmp_path)


def test_a_procedure_that_cannot_be_pickled_is_refused():
    import threading

    lock = threading.Lock()
    search = mh.GridSearch(lambda p: lock, {"hidden": 8}, epochs=1)
    with pytest.raises(mh.ConfigError, match=r"the procedure cannot be saved with the run"):
        dump_procedure(search)
