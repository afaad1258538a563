"""Readouts: parameter-free modules between a chosen layer's output and the head."""

from __future__ import annotations

import torch
from torch import nn

from modelhopper.errors import ConfigError

__all__ = ["Flatten", "MaskedPool"]

_POOLINGS = ("mean", "max", "cls")


class Flatten(nn.Module):
    """(N, ...) -> (N, features): a feature map read by a linear head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class MaskedPool(nn.Module):
    """Pool token vectors into one per sequence, over real tokens only.

    Input is (N, T, H + 1): H hidden features per token and, last, the attention
    mask (1 for a token, 0 for padding), the layout ``bert_blocks`` passes between
    blocks. ``mode`` is ``mean`` (mean of the real tokens), ``max`` (per-feature
    maximum over them) or ``cls`` (the first token's vector).
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in _POOLINGS:
            raise ConfigError(f"MaskedPool mode must be one of {_POOLINGS}, got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, mask = x[..., :-1], x[..., -1:]
        if self.mode == "cls":
            return hidden[:, 0]
        if self.mode == "max":
            return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
