"""Transfer learning as model selection: pretrained blocks, frozen or fine-tuned per MST.

``PretrainedTrunk`` cuts a user-loaded network at the layer an MST chooses,
freezes what the MST does not fine-tune, and turns the frozen prefix into a
``Representation`` that each worker materialises once per shard.
``adapter_estimator`` fine-tunes a ``SharedBase`` (one frozen copy per worker)
with a ``peft`` adapter per MST: only the adapter hops.
"""

from modelhopper.transfer._adapters import AdapterModel, SharedBase, adapter_estimator
from modelhopper.transfer._readouts import Flatten, MaskedPool
from modelhopper.transfer._text import (
    bert_blocks,
    gloss_dataset,
    load_encoder,
    load_sentence_encoder,
    load_tokenizer,
    minilm_path,
    tokenize,
)
from modelhopper.transfer._trunk import PretrainedTrunk, TransferParts

__all__ = [
    "AdapterModel",
    "Flatten",
    "MaskedPool",
    "PretrainedTrunk",
    "SharedBase",
    "TransferParts",
    "adapter_estimator",
    "bert_blocks",
    "gloss_dataset",
    "load_encoder",
    "load_sentence_encoder",
    "load_tokenizer",
    "minilm_path",
    "tokenize",
]
