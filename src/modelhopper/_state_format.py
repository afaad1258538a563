"""How an MST's state becomes bytes: for every hop and every checkpoint.

A state is a nest of dicts, lists and tuples holding tensors and plain values
(a model's and an optimizer's ``state_dict``, an lr scheduler's, an RNG
state). It is written as ``safetensors`` (the tensors, raw) whose metadata
holds the nest as JSON with each tensor replaced by its key: loading is ~10x
faster than ``torch.load(weights_only=True)``'s unpickler (~0.15 ms against
~1.6 ms for a small MLP with Adam), which a worker pays on every hop, and it is
just as safe to read. A nest with anything else (a tensor subclass, tensors
sharing memory, a value JSON cannot hold) is written with ``torch.save``
instead; ``decode`` reads both, and the checkpoints of earlier versions.
"""

from __future__ import annotations

import io
import json
import struct
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

__all__ = ["encode", "decode"]

_META_KEY = "modelhopper.state"
_SCALARS = (str, int, float, bool, type(None))


class _Unsupported(Exception):
    """The nest holds something the fast format cannot: use torch.save."""


def encode(state: Mapping[str, Any]) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    try:
        nest = _flatten(dict(state), tensors)
        return save_tensors(tensors, metadata={_META_KEY: json.dumps(nest)})
    except (_Unsupported, RuntimeError, ValueError, TypeError):
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        return buffer.getvalue()


def decode(data: bytes) -> dict[str, Any]:
    if data[:2] == b"PK":  # a torch.save zip: a fallback, or an earlier version's checkpoint
        # On the CPU whatever device wrote it: loading copies it to the model's device.
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    (header_size,) = struct.unpack("<Q", data[:8])
    nest = json.loads(json.loads(data[8 : 8 + header_size])["__metadata__"][_META_KEY])
    return _unflatten(nest, load_tensors(data))


def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The nest as JSON-ready data; every container is tagged, so a bare value is a scalar."""
    if type(value) is torch.Tensor:  # a subclass (Parameter, DTensor...) may carry more
        if value.layout is not torch.strided or value.is_quantized:
            raise _Unsupported
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous()
        return {"t": key}
    if isinstance(value, dict):
        items = [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in value.items()]
        tagged: dict[str, Any] = {"d": items}
        if type(value) is OrderedDict and hasattr(value, "_metadata"):
            # A model's state_dict: its module versions guide load_state_dict.
            tagged["m"] = _flatten(value._metadata, tensors)
        return tagged
    if type(value) in (list, tuple):
        tag = "l" if type(value) is list else "u"
        return {tag: [_flatten(v, tensors) for v in value]}
    if type(value) in _SCALARS:
        return value
    raise _Unsupported


def _unflatten(nest: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(nest, dict):
        return nest
    if "t" in nest:
        return tensors[nest["t"]]
    if "l" in nest:
        return [_unflatten(v, tensors) for v in nest["l"]]
    if "u" in nest:
        return tuple(_unflatten(v, tensors) for v in nest["u"])
    pairs = [(_unflatten(k, tensors), _unflatten(v, tensors)) for k, v in nest["d"]]
    if "m" not in nest:
        return dict(pairs)
    ordered: OrderedDict[Any, Any] = OrderedDict(pairs)
    ordered._metadata = _unflatten(nest["m"], tensors)  # type: ignore[attr-defined]
    return ordered
