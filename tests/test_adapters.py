"""Adapter MSTs (peft LoRA / IA3) on a frozen base shared per worker: only adapters hop.

The base is a tiny BERT built from a config with seeded random weights (nothing
downloads); the task is synthetic token sequences whose label is which of three
marker tokens they hold (a mechanics test: what hops, what is shared, what equals
plain PEFT training; learning on real text is the example's, examples/lora_glosses.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modelhopper as mh
from modelhopper.data._sharding import shard_splits
from modelhopper.estimator import denormals_flushed, derive_seed, state_from_bytes
from modelhopper.testing import EstimatorConformance

peft = pytest.importorskip("peft", reason="adapters need the transfer extra")
transformers = pytest.importorskip("transformers", reason="adapters need the transfer extra")

from modelhopper.transfer import (  # noqa: E402
    SharedBase,
    _adapters,  # noqa: E402
    adapter_estimator,
)

VOCAB, LENGTH, N_WORKERS, EPOCHS, SEED = 40, 12, 2, 2, 5


def build_base() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=LENGTH, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


BASE = SharedBase(build_base, key="tiny-bert")


def make_estimator(p):
    if p["kind"] == "lora":
        adapter = peft.LoraConfig(r=p["rank"], lora_alpha=2 * p["rank"], lora_dropout=0.1,
                                  target_modules=p["targets"], task_type="SEQ_CLS")  # fmt: skip
    else:
        adapter = peft.IA3Config(
            target_modules=["key", "value", "output.dense"], task_type="SEQ_CLS",
            feedforward_modules=["output.dense"],
        )  # fmt: skip
    return adapter_estimator(
        BASE, adapter, batch_size=16,
        optimizer=lambda params: torch.optim.AdamW(params, lr=p["lr"]),
    )  # fmt: skip


SPACE = {
    "kind": mh.grid(["lora"]),
    "rank": mh.grid([2, 4]),
    "targets": mh.grid([["query", "value"], ["query", "key", "value"]]),
    "lr": 1e-2,
}


def tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of filler tokens 4..VOCAB with one marker (1, 2 or 3) somewhere: its class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(4, VOCAB, size=(n, LENGTH))
    y = rng.integers(0, 3, size=n)
    x[np.arange(n), rng.integers(1, LENGTH - 4, size=n)] = y + 1
    padding = rng.integers(0, 4, size=n)  # the last 0-3 tokens of each row
    x[np.arange(LENGTH)[None, :] >= (LENGTH - padding)[:, None]] = 0
    return x.astype(np.int64), y.astype(np.int64)


@pytest.fixture(scope="module")
def data() -> mh.Dataset:
    x, y = tokens(160, 0)
    vx, vy = tokens(48, 1)
    return mh.Dataset.from_numpy(x, y, vx, vy)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> mh.Result:
    search = mh.GridSearch(make_estimator, SPACE, epochs=EPOCHS, metric="val_accuracy",
                           direction="maximize", seed=SEED)  # fmt: skip
    return search.fit(data, n_workers=N_WORKERS, run_dir=tmp_path_factory.mktemp("run"),
                      executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip


def _plain_peft(mst: mh.MST, data: mh.Dataset, history: list[dict]):
    """The oracle: plain PEFT in one process, one adapter, the shards in MOP's order."""
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE.seed)
        base = build_base()
    torch.manual_seed(mst.seed)
    p = mst.params
    config = peft.LoraConfig(r=p["rank"], lora_alpha=2 * p["rank"], lora_dropout=0.1,
                             target_modules=p["targets"], task_type="SEQ_CLS")  # fmt: skip
    model = peft.get_peft_model(base, config)
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=p["lr"])
    shards = shard_splits(data, N_WORKERS, seed=SEED)
    for row in history:
        model.train()
        for shard in row["train_order"]:
            train, _ = shards[shard]
            generator = torch.Generator().manual_seed(derive_seed(mst.seed, row["epoch"], shard))
            order = torch.randperm(len(train), generator=generator).numpy()
            for start in range(0, len(train), 16):
                rows = order[start : start + 16]
                x, y = torch.from_numpy(train.x[rows]), torch.from_numpy(train.y[rows])
                optimizer.zero_grad()
                model(input_ids=x, attention_mask=x.ne(0), labels=y).loss.backward()
                optimizer.step()
    return model, optimizer


def test_adapter_msts_train_like_plain_peft_and_hop_only_the_adapter(run, data):
    assert [r.status for r in run.msts] == [mh.MSTStatus.COMPLETED] * 4
    assert run.stats.n_hops > 0
    for record in run.msts:
        mst = mh.MST(record.id, record.params, record.seed)
        with denormals_flushed():  # as in the workers
            reference, optimizer = _plain_peft(mst, data, record.history)
        state = state_from_bytes(record.checkpoint.read_bytes())
        mine = [q for q in reference.parameters() if q.requires_grad]
        # The hop and the checkpoint: the adapter (and its head) alone, equal to PEFT's.
        assert len(state["model"]) == len(mine)
        for index, tensor in enumerate(mine):  # bit for bit
            assert torch.equal(state["model"][f"adapter.{index}"], tensor.detach()), index
        full = sum(q.numel() for q in reference.parameters())  # a tiny base: LoRA is big
        assert sum(t.numel() for t in state["model"].values()) < 0.2 * full
        assert len(state["optimizer"]["state"]) == len(mine)


def test_every_mst_on_a_worker_shares_one_frozen_base(data):
    torch.manual_seed(0)
    before = set(_adapters._BASES)
    estimators = [make_estimator({"kind": "lora", "rank": r, "targets": ["query"], "lr": 0.01})
                  for r in (2, 4, 8)]  # fmt: skip
    ia3 = make_estimator({"kind": "ia3", "lr": 0.01})
    shared = {id(e.model.shared) for e in estimators}
    assert len(shared) == 1 and id(ia3.model.shared) not in shared  # one copy per kind
    base = estimators[0].model.shared
    assert set(_adapters._BASES) - before <= {("tiny-bert", "LORA"), ("tiny-bert", "IA3")}
    names = {e.model.adapter_name for e in estimators}
    assert names <= set(base.peft_config)
    frozen = [q for n, q in base.named_parameters()
              if ".mh" not in n and "modules_to_save" not in n]  # fmt: skip
    assert frozen and not any(q.requires_grad for q in frozen)
    x = torch.from_numpy(tokens(4, 2)[0])
    outputs = [e.model(x) for e in estimators]  # each its own adapter on the one base
    assert all(o.shape == (4, 3) for o in outputs)
    dropped = estimators.pop().model.adapter_name
    del ia3, outputs
    assert dropped not in base.peft_config  # an MST dropped from the cache drops its adapter
    assert {e.model.adapter_name for e in estimators} <= set(base.peft_config)


def test_ia3_adapters_train_and_hop_too(data, tmp_path):
    search = mh.GridSearch(make_estimator, {"kind": "ia3", "lr": mh.grid([3e-2, 1e-2])},
                           epochs=1, seed=SEED)  # fmt: skip
    result = search.fit(data, n_workers=N_WORKERS, run_dir=tmp_path,
                        executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip
    assert [r.status for r in result.msts] == [mh.MSTStatus.COMPLETED] * 2
    state = state_from_bytes(result.msts[0].checkpoint.read_bytes())
    assert 0 < len(state["model"]) < 20


class TestAdapterEstimator(EstimatorConformance):
    params = {"kind": "lora", "rank": 2, "targets": ["query", "value"], "lr": 1e-2}

    def make_estimator(self, params):
        return make_estimator(params)

    def dataset(self):
        return (*tokens(64, 3), *tokens(32, 4))


def test_an_adapter_run_with_workers_killed_ends_as_an_undisturbed_one(run, data, tmp_path):
    from modelhopper.testing import ChaosExecutor, KillPlan

    search = mh.GridSearch(make_estimator, SPACE, epochs=EPOCHS, metric="val_accuracy",
                           direction="maximize", seed=SEED)  # fmt: skip
    plan = KillPlan(start_up=frozenset({2}), running={2: True, 7: False})
    # One copy of the data: a visit is one sub-epoch, so the run has a fixed number of visits
    # for the plan to count (a worker holding every shard chains as many as fit in its time slice).
    executor = ChaosExecutor(plan, threads_per_worker=1, max_restarts=4, replicas=1)
    killed = search.fit(data, n_workers=N_WORKERS, run_dir=tmp_path, executor=executor)
    assert sum(executor.restarts) == len(executor.kills) == 4
    drop = ["train_seconds", "eval_seconds"]
    assert killed.history().drop(columns=drop).equals(run.history().drop(columns=drop))
