"""PretrainedTrunk surgery and freezing; materialised frozen trunks train like re-run ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.estimator import state_from_bytes
from modelhopper.transfer import Flatten, MaskedPool, PretrainedTrunk


def load_blocks() -> list[nn.Module]:
    """A small 'pretrained' MLP on 8x8 digits: weights fixed by their own generator."""
    generator = torch.Generator().manual_seed(1234)
    widths = [64, 48, 32, 24]
    blocks = []
    for a, b in zip(widths, widths[1:], strict=False):
        linear = nn.Linear(a, b)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(b, a, generator=generator) / a**0.5)
            linear.bias.copy_(torch.randn(b, generator=generator) * 0.1)
        blocks.append(nn.Sequential(linear, nn.Tanh(), nn.Dropout(0.3)))
    return blocks


def _trunk(materialise: bool = True, load=load_blocks) -> PretrainedTrunk:
    return PretrainedTrunk(load, name="digits-mlp", materialise=materialise)


@pytest.mark.parametrize(
    ("layer", "trainable_from", "materialised_layer", "n_tuned_blocks"),
    [(1, None, 1, 0), (3, None, 3, 0), (3, 2, 2, 1), (3, 1, 1, 2), (2, 0, None, 2)],
)
def test_split_freezes_the_prefix_and_copies_the_tuned_blocks(
    layer, trainable_from, materialised_layer, n_tuned_blocks
):
    trunk = _trunk()
    parts = trunk.split(layer=layer, trainable_from=trainable_from)
    if materialised_layer is None:
        assert parts.representation is None
    else:
        assert parts.representation.params["layer"] == materialised_layer
    tuned = list(parts.trunk.parameters())
    assert len(tuned) == 2 * n_tuned_blocks and all(p.requires_grad for p in tuned)
    assert not any(p.requires_grad for b in trunk.blocks() for p in b.parameters())
    assert all(
        p.data_ptr() != q.data_ptr() for p in tuned for b in trunk.blocks() for q in b.parameters()
    )


def test_unmaterialised_trunk_keeps_frozen_weights_out_of_the_state():
    trunk = _trunk(materialise=False)
    parts = trunk.split(layer=3, trainable_from=2)
    assert parts.representation is None
    assert set(parts.trunk.state_dict()) == {"1.0.weight", "1.0.bias"}  # the tuned block only
    materialised = _trunk().split(layer=3, trainable_from=2).trunk
    assert set(materialised.state_dict()) == set(parts.trunk.state_dict())
    parts.trunk.train()
    x = torch.rand(5, 64)
    out1, out2 = parts.trunk[0](x), parts.trunk[0](x)  # frozen part: eval mode, no dropout
    assert torch.equal(out1, out2) and not out1.requires_grad


def test_moving_the_model_moves_its_frozen_blocks():
    parts = _trunk(materialise=False).split(layer=2, trainable_from=1)
    model = nn.Sequential(parts.trunk, nn.Linear(32, 10)).to(torch.float64)  # as .to(device)
    assert model(torch.rand(4, 64, dtype=torch.float64)).dtype == torch.float64


def test_loading_does_not_move_the_global_rng():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _trunk().blocks()
    assert torch.equal(torch.rand(3), expected)


def test_randomly_initialised_blocks_are_the_same_in_every_process():
    torch.manual_seed(1)
    a = PretrainedTrunk(lambda: [nn.Linear(4, 4)], name="scratch").blocks()[0].weight
    torch.manual_seed(2)
    b = PretrainedTrunk(lambda: [nn.Linear(4, 4)], name="scratch").blocks()[0].weight
    assert torch.equal(a, b)


def test_fingerprint_follows_the_weights_and_the_cut():
    def heavier():
        blocks = load_blocks()
        with torch.no_grad():
            blocks[0][0].bias.add_(1.0)
        return blocks

    a = _trunk().features(2).fingerprint
    assert a == _trunk().features(2).fingerprint
    assert a != _trunk(load=heavier).features(2).fingerprint
    assert a != _trunk().features(1).fingerprint


def test_features_equal_the_blocks_applied_in_order():
    trunk = _trunk()
    x = torch.rand(10, 64)
    expected = trunk.blocks()[1](trunk.blocks()[0](x))
    assert torch.equal(trunk.features(2)(x), expected)


def test_materialising_layer_after_layer_runs_each_block_once_per_chunk():
    calls = []

    def counted():
        blocks = load_blocks()
        for i, block in enumerate(blocks):
            block.register_forward_hook(lambda *_, i=i: calls.append(i))
        return blocks

    trunk = PretrainedTrunk(counted, name="digits-mlp", readouts={"sum": _Sum()})
    x = torch.rand(10, 64)
    reference = [block.eval() for block in load_blocks()]
    expected = x
    for layer in (1, 2, 3):
        expected = reference[layer - 1](expected)
        for readout in (None, "sum"):
            got = trunk.features(layer, readout)(x)
            assert torch.equal(got, expected if readout is None else expected.sum(1, True))
    assert calls == [0, 1, 2]  # each block once, though 6 representations were built
    assert torch.equal(trunk.features(1)(x), reference[0](x))  # shallower: from the input
    assert calls == [0, 1, 2, 0]


class _Sum(nn.Module):
    def forward(self, x):
        return x.sum(1, keepdim=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": 0}, r"layer must be an int in \[1, 3\] for 'digits-mlp' \(3 blocks\), got 0"),
        ({"layer": 2, "trainable_from": 3}, r"trainable_from must be an int in \[0, 2\]"),
        ({"layer": 2, "readout": "avg"}, "readout 'avg' is not one of"),
    ],
)
def test_split_rejects_bad_cuts(kwargs, match):
    with pytest.raises(mh.ConfigError, match=match):
        _trunk().split(**kwargs)


def test_readouts_must_be_parameter_free():
    with pytest.raises(mh.ConfigError, match="readout 'lin' must be a torch.nn.Module without"):
        PretrainedTrunk(load_blocks, name="t", readouts={"lin": nn.Linear(2, 2)})


def test_load_must_return_modules():
    with pytest.raises(mh.ConfigError, match="load\\(\\) must return torch.nn.Module blocks"):
        PretrainedTrunk(lambda: [nn.Linear(2, 2), "x"], name="t").blocks()


def test_masked_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    x = torch.cat([hidden, torch.tensor([[[1.0], [1.0], [0.0]]])], dim=-1)
    assert torch.equal(MaskedPool("mean")(x), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(MaskedPool("max")(x), torch.tensor([[3.0, 4.0]]))
    assert torch.equal(MaskedPool("cls")(x), torch.tensor([[1.0, 2.0]]))
    assert Flatten()(torch.zeros(2, 3, 4)).shape == (2, 12)
    with pytest.raises(mh.ConfigError, match="MaskedPool mode must be one of"):
        MaskedPool("sum")


# ---------------------------------------------------------------- materialised == re-run


def _factory(materialise: bool):
    trunk = _trunk(materialise)

    def make_estimator(p):
        layer, trainable_from = p["cut"]
        width = [64, 48, 32, 24][layer]
        head = nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 10))
        return trunk.estimator(
            layer=layer,
            trainable_from=trainable_from,
            head=head,
            optimizer=lambda params: torch.optim.Adam(params, lr=p["lr"]),
            loss=nn.CrossEntropyLoss(),
            batch_size=32,
        )

    return make_estimator


# A frozen-feature head on layer 2, and layer 3 with blocks 2-3 fine-tuned on frozen layer 1.
SPACE = {"cut": mh.grid([[2, None], [3, 1]]), "lr": 3e-3}


def _fit(materialise: bool, tmp_path):
    search = mh.GridSearch(_factory(materialise), SPACE, epochs=2, metric="val_accuracy", seed=3)
    return search.fit(
        mh.datasets.digits(seed=0),
        n_workers=2,
        run_dir=tmp_path / f"materialise-{materialise}",
        executor=mh.LocalExecutor(threads_per_worker=1),
    )


@pytest.mark.slow
def test_materialised_trunk_trains_like_the_trunk_rerun_every_batch(tmp_path):
    """Same MSTs, shard orders and seeds; only where the frozen prefix runs differs.

    Materialised features come from chunks of 256 rows, re-run ones from each
    training batch, so a matmul kernel chosen by batch size may round differently:
    we require agreement to float tolerance (1e-5), not bits. Row-wise elementwise
    representations agree bit for bit (test_equivalence_representations.py).
    """
    fast, slow = _fit(True, tmp_path), _fit(False, tmp_path)
    assert len(fast.msts) == len(slow.msts) == 2
    for a, b in zip(fast.msts, slow.msts, strict=True):
        assert a.params == b.params and a.status is mh.MSTStatus.COMPLETED
        assert [r["train_order"] for r in a.history] == [r["train_order"] for r in b.history]
        state_a = state_from_bytes(a.checkpoint.read_bytes())["model"]
        state_b = state_from_bytes(b.checkpoint.read_bytes())["model"]
        assert state_a.keys() == state_b.keys()
        for name, tensor in state_a.items():
            torch.testing.assert_close(state_b[name], tensor, rtol=1e-5, atol=1e-5)
        for row_a, row_b in zip(a.history, b.history, strict=True):
            assert row_a["val_loss"] == pytest.approx(row_b["val_loss"], rel=1e-5)
