"""PretrainedTrunk: layer surgery, freezing and materialisation for transfer-learning MSTs.

The user loads a pretrained network and splits it into an ordered list of blocks
(``load() -> [block_1, ..., block_n]``); block ``i`` maps block ``i-1``'s output to
its own. An MST then picks, as ordinary space parameters:

- ``layer`` (1..n): the head reads the output of block ``layer``;
- ``trainable_from`` (0..layer): blocks ``trainable_from+1 .. layer`` are fine-tuned
  (copied per MST), blocks ``1 .. trainable_from`` stay frozen. ``trainable_from =
  layer`` (the default) is feature extraction with a new head; ``0`` fine-tunes all.

The frozen prefix is a deterministic function of the raw input, so with
``materialise=True`` it becomes the MST's ``Representation``: the worker runs it
once per shard and (layer, readout) and every MST with the same frozen prefix
trains on the stored output. With ``materialise=False`` the frozen prefix is part
of the model and re-runs on every batch, which is the baseline the benchmark
compares against. Either way the MST's state (what hops and is checkpointed)
holds only trainable weights; frozen weights are read from ``load()``.

Materialising layer after layer reuses work: per chunk of the shard, the output
of the deepest block run so far is kept (``reuse_bytes``), so features of layer
``L + 1`` or another readout of layer ``L`` continue from it. With MSTs arriving
in layer order, each block runs once per shard, not once per (layer, readout).
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelhopper.errors import ConfigError
from modelhopper.estimator import Estimator
from modelhopper.representations._representation import Representation

__all__ = ["PretrainedTrunk", "TransferParts"]


class _Frozen(nn.Module):
    """Frozen blocks run in eval mode without gradients, kept out of state_dict().

    The blocks are held in a plain list, not as submodules, so the MST's state
    (hops, checkpoints) carries only its trainable weights and every MST in a
    process shares one copy of the pretrained weights.
    """

    def __init__(self, blocks: Sequence[nn.Module], readout: nn.Module | None = None) -> None:
        super().__init__()
        self._blocks = [*blocks, *([readout] if readout is not None else [])]

    def _apply(self, fn: Any, recurse: bool = True) -> _Frozen:
        # model.to(device) must move the frozen blocks too (a worker's MSTs share one device).
        for block in self._blocks:
            block._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for block in self._blocks:
                x = block(x)
        return x

    def extra_repr(self) -> str:
        return f"{len(self._blocks)} frozen blocks"


@dataclass(frozen=True)
class TransferParts:
    """What one (layer, trainable_from, readout) choice turns into.

    ``representation`` is the materialised frozen prefix (None when nothing is
    frozen, or when not materialising); ``trunk`` is the module the MST trains
    before its head: fine-tuned block copies, the readout, and (when not
    materialising) the frozen prefix.
    """

    representation: Representation | None
    trunk: nn.Module


class PretrainedTrunk:
    """A pretrained network as ordered blocks, loaded once per process by ``load``.

    ``load()`` is the user's code (``torch.load``, ``safetensors``,
    ``from_pretrained``...) and returns the blocks; it runs under a forked torch
    RNG seeded with 0, so loading never changes an MST's initial weights and
    randomly initialised blocks are the same in every worker process. ``readouts`` names
    parameter-free modules applied to the chosen layer's output before the head
    (pooling over tokens, flattening a feature map); their names are MST
    parameters. ``name`` identifies the network in fingerprints, together with a
    hash of its weights.
    """

    def __init__(
        self,
        load: Callable[[], Sequence[nn.Module]],
        *,
        name: str,
        readouts: Mapping[str, nn.Module] | None = None,
        materialise: bool = True,
        batch_size: int = 256,
        reuse_bytes: int = 256 * 2**20,
    ) -> None:
        if not callable(load):
            raise ConfigError(f"PretrainedTrunk load must be a function, got {load!r}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"PretrainedTrunk name must be a non-empty string, got {name!r}")
        readouts = dict(readouts or {"none": nn.Identity()})
        for key, module in readouts.items():
            if not isinstance(module, nn.Module) or any(True for _ in module.parameters()):
                raise ConfigError(
                    f"readout {key!r} must be a torch.nn.Module without parameters, got "
                    f"{module!r}; put trainable layers in the head instead"
                )
        self.load = load
        self.name = name
        self.readouts = readouts
        self.materialise = materialise
        self.batch_size = batch_size
        self.reuse_bytes = reuse_bytes
        self._blocks: list[nn.Module] | None = None
        self._digest: str | None = None
        # chunk of input -> (depth, output of block ``depth``) kept while materialising
        self._reuse: OrderedDict[str, tuple[int, torch.Tensor]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # Workers call load() themselves: pretrained weights never travel with the factory.
        return {**self.__dict__, "_blocks": None, "_digest": None, "_reuse": OrderedDict()}

    # ---------------------------------------------------------------- the blocks
    def blocks(self) -> list[nn.Module]:
        """The frozen pretrained blocks (loaded on first use, then shared in this process)."""
        if self._blocks is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(
                    0
                )  # a loader that initialises modules does so the same everywhere
                loaded = list(self.load())
            self._blocks = [_checked_block(b, i) for i, b in enumerate(loaded)]
            if not self._blocks:
                raise ConfigError(f"PretrainedTrunk {self.name!r}: load() returned no blocks")
        return self._blocks

    @property
    def n_blocks(self) -> int:
        return len(self.blocks())

    def digest(self) -> str:
        """Hash of every block's weights and buffers: changes when the pretrained model does."""
        if self._digest is None:
            digest = hashlib.blake2b(digest_size=16)
            for i, block in enumerate(self.blocks()):
                for key, tensor in block.state_dict().items():
                    digest.update(f"{i}.{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
                    digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
            self._digest = digest.hexdigest()
        return self._digest

    # ---------------------------------------------------------------- surgery
    def features(self, layer: int, readout: str | None = None) -> Representation:
        """The frozen output of block ``layer`` (after ``readout``), as a Representation."""
        self._check_layer(layer, "layer", low=1)
        return Representation(
            f"{self.name}/layer{layer}",
            functools.partial(self._features_of, readout_module=self._readout(readout)),
            params={"layer": layer, "readout": readout},
            digest=self.digest,
            batch_size=self.batch_size,
        )

    def _features_of(
        self, x: torch.Tensor, *, layer: int, readout_module: nn.Module | None, **_: Any
    ) -> torch.Tensor:
        """Block ``layer``'s output for ``x``, continuing from the deepest one kept for ``x``.

        While a worker materialises, it asks for layer after layer (and readout after
        readout) of the same chunks of its shard. Keeping, per chunk, the output of
        the deepest block run so far (within ``reuse_bytes``, least recently used
        first out) makes the trunk run once per shard and layer instead of once per
        (layer, readout) from the input up. The same blocks run on the same chunks
        in the same order, so the features are the same bits.
        """
        key = _chunk_key(x)
        kept, hidden = self._reuse.get(key, (0, x))
        depth = kept if kept <= layer else 0  # kept deeper than asked: run from the input
        if depth == 0:
            hidden = x
        with torch.no_grad():
            for block in self.blocks()[depth:layer]:
                hidden = block(hidden)
        if layer >= kept:
            self._keep(key, layer, hidden)
        if readout_module is None:
            return hidden
        with torch.no_grad():
            return readout_module(hidden)

    def _keep(self, key: str, depth: int, hidden: torch.Tensor) -> None:
        nbytes = hidden.element_size() * hidden.nelement()
        if nbytes > self.reuse_bytes:
            return
        self._reuse[key] = (depth, hidden)
        self._reuse.move_to_end(key)
        while sum(h.element_size() * h.nelement() for _, h in self._reuse.values()) > (
            self.reuse_bytes
        ):
            self._reuse.popitem(last=False)

    def _prefix(self, layer: int, readout: str | None) -> _Frozen:
        return _Frozen(self.blocks()[:layer], self._readout(readout))

    def split(
        self, *, layer: int, trainable_from: int | None = None, readout: str | None = None
    ) -> TransferParts:
        """Cut the network for one MST: frozen prefix, fine-tuned middle, readout."""
        self._check_layer(layer, "layer", low=1)
        frozen = layer if trainable_from is None else trainable_from
        self._check_layer(frozen, "trainable_from", low=0, high=layer)
        readout_module = self._readout(readout)
        tail: list[nn.Module] = [_trainable_copy(b) for b in self.blocks()[frozen:layer]]
        if frozen < layer and readout_module is not None:
            tail.append(readout_module)
        frozen_readout = readout if frozen == layer else None  # feature extraction
        # Slot 0 is the frozen prefix, or a placeholder where it is materialised (or empty),
        # so an MST's state_dict has the same keys either way.
        if frozen == 0:  # fine-tune everything: nothing is frozen
            return TransferParts(None, nn.Sequential(nn.Identity(), *tail))
        if self.materialise:
            rep = self.features(frozen, frozen_readout)
            return TransferParts(rep, nn.Sequential(nn.Identity(), *tail))
        return TransferParts(None, nn.Sequential(self._prefix(frozen, frozen_readout), *tail))

    def estimator(
        self,
        *,
        layer: int,
        head: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        trainable_from: int | None = None,
        readout: str | None = None,
        **estimator_args: Any,
    ) -> Estimator:
        """An Estimator for one transfer MST: ``trunk(layer, trainable_from) -> head``.

        ``optimizer`` is called with the trainable parameters only (fine-tuned blocks
        and head); ``estimator_args`` go to ``Estimator`` (metrics, batch_size, ...).
        """
        parts = self.split(layer=layer, trainable_from=trainable_from, readout=readout)
        model = nn.Sequential(parts.trunk, head)
        return Estimator(
            model=model,
            optimizer=optimizer([p for p in model.parameters() if p.requires_grad]),
            loss=loss,
            representation=parts.representation,
            **estimator_args,
        )

    # ---------------------------------------------------------------- checks
    def _check_layer(self, value: Any, name: str, *, low: int, high: int | None = None) -> None:
        high = self.n_blocks if high is None else high
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                f"{name} must be an int in [{low}, {high}] for {self.name!r} "
                f"({self.n_blocks} blocks), got {value!r}"
            )

    def _readout(self, readout: str | None) -> nn.Module | None:
        if readout is None:
            return None
        if readout not in self.readouts:
            raise ConfigError(
                f"readout {readout!r} is not one of {sorted(self.readouts)} for {self.name!r}; "
                "name it in PretrainedTrunk(readouts={...})"
            )
        return self.readouts[readout]


def _checked_block(block: Any, index: int) -> nn.Module:
    if not isinstance(block, nn.Module):
        raise ConfigError(
            f"load() must return torch.nn.Module blocks, got {type(block).__name__} at "
            f"position {index}"
        )
    block.eval()
    for parameter in block.parameters():
        parameter.requires_grad_(False)
    return block


def _trainable_copy(block: nn.Module) -> nn.Module:
    """A block the MST owns and fine-tunes (the shared pretrained one stays frozen)."""
    tuned = copy.deepcopy(block).train()
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    return tuned


def _chunk_key(x: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tuple(x.shape)}{x.dtype}".encode())
    digest.update(x.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()
