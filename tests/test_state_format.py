"""MST states as bytes: the fast safetensors format, its torch.save fallback, old checkpoints."""

from __future__ import annotations

import io
import math
from collections import OrderedDict

import torch
from torch import nn

from modelhopper._state_format import decode, encode
from modelhopper.estimator import (
    Estimator,
    build_estimator,
    get_state,
    set_state,
    state_from_bytes,
    state_to_bytes,
)


def make_estimator(p):
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"], betas=(0.8, 0.99))
    return Estimator(
        model=model, optimizer=optimizer, loss=nn.CrossEntropyLoss(), batch_size=4,
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
    )  # fmt: skip


def _step(estimator: Estimator, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
    estimator.optimizer.zero_grad()
    estimator.loss(estimator.model(x), y).backward()
    estimator.optimizer.step()
    estimator.lr_scheduler.step()


def _trained(seed: int = 0) -> Estimator:
    estimator = build_estimator(make_estimator, {"lr": 0.01}, seed)
    for i in range(3):
        _step(estimator, i)
    return estimator


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and (
        a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
    )


def test_a_trained_state_round_trips_exactly_in_the_fast_format():
    state = get_state(_trained(), torch.get_rng_state())
    data = state_to_bytes(state)
    assert data[:2] != b"PK"  # safetensors, not the torch.save fallback
    loaded = state_from_bytes(data)
    assert _same(state, loaded)  # tensors, dtypes, tuples (Adam's betas), int keys
    assert loaded["model"]._metadata == state["model"]._metadata  # module versions kept


def test_training_goes_on_identically_after_a_round_trip():
    original = _trained()
    state = state_from_bytes(state_to_bytes(get_state(original, torch.get_rng_state())))
    copy = build_estimator(make_estimator, {"lr": 0.01}, seed=99)  # other initial weights
    set_state(copy, state)
    for estimator in (original, copy):
        _step(estimator, 7)
    after = original.model.state_dict(), copy.model.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(*(s.values() for s in after), strict=True))
    assert copy.optimizer.param_groups[0]["lr"] == original.optimizer.param_groups[0]["lr"]


def test_special_floats_and_plain_values_round_trip():
    state = {"x": [float("nan"), float("inf"), -0.0, 1e-310], "flag": True, "none": None,
             "n": 2**70, "name": "cosine", "nested": ({3: "a"}, [])}  # fmt: skip
    assert encode(state)[:2] != b"PK"
    assert _same(state, decode(encode(state)))


def test_tensors_sharing_memory_fall_back_to_torch_save():
    weight = torch.randn(3, 3)
    state = {"model": OrderedDict(a=weight, b=weight.detach())}  # tied weights
    data = encode(state)
    assert data[:2] == b"PK"
    assert _same(state, decode(data))


def test_a_value_json_cannot_hold_falls_back_to_torch_save():
    state = {"dtype": torch.float16, "t": torch.arange(3)}
    data = encode(state)
    assert data[:2] == b"PK"
    loaded = decode(data)
    assert loaded["dtype"] is torch.float16 and _same(loaded["t"], torch.arange(3))


def test_checkpoints_written_by_torch_save_still_load():
    state = get_state(_trained(), torch.get_rng_state())
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)  # what earlier versions wrote
    assert _same(state, state_from_bytes(buffer.getvalue()))


def test_non_contiguous_and_low_precision_tensors_round_trip():
    state = {
        "t": torch.randn(4, 6).t(),
        "h": torch.randn(5).to(torch.bfloat16),
        "e": torch.empty(0),
    }
    loaded = decode(encode(state))
    assert _same({k: v.contiguous() for k, v in state.items()}, loaded)
