"""Blocks of a BERT-family encoder (e.g. all-MiniLM-L6-v2) for ``PretrainedTrunk``.

Token ids go in; between blocks travels one tensor (N, T, H + 1): the hidden
states with the attention mask as the last channel, so any layer's output can
be materialised as one array and pooled later (``MaskedPool``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["bert_blocks"]


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
