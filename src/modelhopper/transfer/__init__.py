"""Transfer learning as model selection: pretrained blocks, frozen or fine-tuned per MST.

``PretrainedTrunk`` cuts a user-loaded network at the layer an MST chooses,
freezes what the MST does not fine-tune, and turns the frozen prefix into a
``Representation`` that each worker materialises once per shard.
"""

from modelhopper.transfer._readouts import Flatten, MaskedPool
from modelhopper.transfer._text import (
    bert_blocks,
    load_encoder,
    load_sentence_encoder,
    load_tokenizer,
    minilm_path,
    tokenize,
)
from modelhopper.transfer._trunk import PretrainedTrunk, TransferParts

__all__ = [
    "Flatten",
    "MaskedPool",
    "PretrainedTrunk",
    "TransferParts",
    "bert_blocks",
    "load_encoder",
    "load_sentence_encoder",
    "load_tokenizer",
    "minilm_path",
    "tokenize",
]
