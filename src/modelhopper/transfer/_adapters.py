"""Parameter-efficient fine-tuning as MSTs: a frozen base shared per worker, adapters that hop.

Fine-tuning a pretrained Transformer with an adapter (LoRA, IA3; the ``peft``
package) trains megabytes on top of a frozen base of up to gigabytes. Under
MOP only the adapter and its optimizer state need to move; the base is the
same for every MST that names it. So each worker process builds a base once
(``SharedBase``: a build function, a key, a seed for any random weights) and
attaches every MST's adapter to that one copy, under a name of its own (PEFT's
multi-adapter models); a visit activates its MST's adapter. The MST's module
(``AdapterModel``) registers only its adapter's parameters, so its state dict,
its optimizer, the hop and the checkpoint hold the adapter alone, while the
model's forward runs the shared base with that adapter. An MST dropped from a
worker's cache drops its adapter from the base.

One base copy per worker per (key, adapter kind): PEFT cannot mix LoRA and IA3
adapters on one model, so a search over both kinds holds two copies.
"""

from __future__ import annotations

import itertools
import re
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelhopper.errors import EstimatorError
from modelhopper.estimator import MODEL_LOSS, Estimator

__all__ = ["AdapterModel", "SharedBase", "adapter_estimator"]


@dataclass(frozen=True)
class SharedBase:
    """A pretrained (or seeded random) model that every MST of a worker shares, frozen.

    ``build`` returns the model (e.g. ``lambda: AutoModelForSequenceClassification
    .from_pretrained(path, num_labels=4)``); it runs once per worker process and key,
    under ``torch.manual_seed(seed)`` with the MST's own random state set aside, so
    a base with random weights is the same on every worker.
    """

    build: Callable[[], nn.Module]
    key: str
    seed: int = 0


@dataclass
class _Attached:
    """One worker's copy of a base, with the adapters of its MSTs attached."""

    model: Any  # a peft.PeftModel
    orphans: set[str] = field(default_factory=set)  # released, kept while the last one


_BASES: dict[tuple[str, str], _Attached] = {}  # (key, adapter kind) -> this process's copy
_NAMES = (f"mh{n}" for n in itertools.count())


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:  # pragma: no cover - the extra is installed in CI
        raise EstimatorError("adapter MSTs need peft: pip install 'modelhopper[transfer]'") from e
    return peft


def _quietly(call: Callable[[], Any]) -> Any:
    """PEFT notices what is expected here (a deprecated transformers call it makes; the
    active adapter deleted): not the user's concern, not on every worker's stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        return call()


def _attach(base: SharedBase, config: Any) -> tuple[Any, str]:
    """This process's copy of ``base`` with a new adapter from ``config``; its name."""
    peft = _peft()
    name = next(_NAMES)
    kind = config.peft_type
    slot = (base.key, str(getattr(kind, "value", kind)))  # "LORA", "IA3"
    attached = _BASES.get(slot)
    if attached is None:
        with torch.random.fork_rng(devices=[]):  # the MST's random state stays as it was
            torch.manual_seed(base.seed)
            model = base.build()
        if not isinstance(model, nn.Module):
            raise EstimatorError(
                f"SharedBase {base.key!r}: build() must return a torch.nn.Module, got "
                f"{type(model).__name__}"
            )
        made = _quietly(lambda: peft.get_peft_model(model, config, adapter_name=name))
        attached = _BASES[slot] = _Attached(made)
    else:
        _quietly(lambda: attached.model.add_adapter(name, config))
        for orphan in attached.orphans:  # another adapter now exists: they can go
            _quietly(lambda: attached.model.delete_adapter(orphan))  # noqa: B023
        attached.orphans.clear()
    return attached, name


def _release(attached: _Attached, name: str) -> None:
    """Drop an MST's adapter from its base; PEFT needs one left, so the last one waits."""
    if name not in attached.model.peft_config:
        return
    if len(attached.model.peft_config) > 1:
        _quietly(lambda: attached.model.delete_adapter(name))
    else:
        attached.orphans.add(name)


def _adapter_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters of adapter ``name`` (its LoRA/IA3 weights and its copies of the
    modules PEFT trains whole, such as a classifier head), in the model's order."""
    pattern = re.compile(rf"(^|\.){re.escape(name)}(\.|$)")
    return [p for n, p in model.named_parameters() if pattern.search(n)]


class AdapterModel(nn.Module):
    """One MST's adapter on its worker's shared base.

    Its parameters (and so its state dict, optimizer and hops) are the adapter's
    alone; calling it runs the base with this adapter active. ``x`` holds token
    ids; the attention mask is ``x != pad_token_id``. With ``labels`` it returns
    the model's own output (``.loss``, ``.logits``): the task's loss, as the
    model computes it (``Estimator(loss="model")``).
    """

    def __init__(self, base: SharedBase, adapter: Any, *, pad_token_id: int = 0) -> None:
        super().__init__()
        attached, self.adapter_name = _attach(base, adapter)
        self.base_key = base.key
        self.pad_token_id = pad_token_id
        self._attached = (attached,)  # a tuple: not a submodule, its weights are not ours
        self.adapter = nn.ParameterList(_adapter_parameters(attached.model, self.adapter_name))
        if not len(self.adapter):
            raise EstimatorError(
                f"the adapter config {type(adapter).__name__} found nothing to adapt in "
                f"{base.key!r}; check target_modules against the model's module names"
            )
        weakref.finalize(self, _release, attached, self.adapter_name)

    @property
    def shared(self) -> Any:
        """The worker's base model with every attached adapter (a ``peft.PeftModel``)."""
        return self._attached[0].model

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        shared = self.shared
        if shared.active_adapter != self.adapter_name:
            shared.set_adapter(self.adapter_name)  # also makes only this adapter trainable
        output = shared(input_ids=x, attention_mask=x.ne(self.pad_token_id), labels=labels)
        return output if labels is not None else output.logits

    def train(self, mode: bool = True) -> AdapterModel:
        self.shared.train(mode)  # dropout in the base too: not a submodule, so by hand
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> AdapterModel:
        self.shared._apply(fn, recurse)  # the base goes where the adapter goes (a GPU)
        return super()._apply(fn, recurse)


def adapter_estimator(
    base: SharedBase,
    adapter: Any,
    *,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    batch_size: int = 32,
    metrics: Sequence[str] = ("accuracy",),
    pad_token_id: int = 0,
    lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> Estimator:
    """An ``Estimator`` fine-tuning ``base`` with one adapter (a ``peft`` config such as
    ``LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
    task_type="SEQ_CLS")``): the model's own loss, the optimizer over the adapter's
    parameters only. Call it from ``make_estimator``, with the adapter's settings
    drawn from the space."""
    model = AdapterModel(base, adapter, pad_token_id=pad_token_id)
    built = optimizer(model.parameters())
    return Estimator(
        model=model,
        optimizer=built,
        loss=MODEL_LOSS,
        metrics=metrics,
        batch_size=batch_size,
        lr_scheduler=lr_scheduler(built) if lr_scheduler is not None else None,
    )
