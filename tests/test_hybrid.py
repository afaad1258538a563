"""Hybrid mode: an MST's epoch trained data-parallel by a group of workers.

The oracle is plain PyTorch written apart from the engine, sharing only the documented
contract (``modelhopper._data_parallel``): global batch ``k`` of an epoch is part ``k``
of every shard's shuffled rows, each shard cut into ``ceil(rows / batch_size)`` parts;
the step is SGD on the mean loss over that batch.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper._data_parallel import ShardPart, group_train_pass, n_global_batches, shard_parts
from modelhopper.data._sharding import shard_splits
from modelhopper.errors import ConfigError
from modelhopper.estimator import denormals_flushed, state_from_bytes
from modelhopper.executors import GroupSpec
from modelhopper.executors._group import group_channel
from modelhopper.scheduling import Hybrid, MOPScheduler, StepKind, Visit, replicated_holdings
from modelhopper.store import EventKind, open_store
from modelhopper.store._timeline import visits_of

SEED = 5
# Where the oracle's members train: the CPU, and a GPU where there is one (a lent GPU
# machine runs this file too); gradients cross to the host to be summed in shared memory.
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    return mh.Estimator(
        model, optimizer, nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32,
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
    )  # fmt: skip


def _sgd_over_global_batches(estimator, shards, *, seed, epochs):
    """Plain PyTorch: each epoch's global batches, one step each, in one process."""
    n_rows = sum(len(y) for _, y in shards.values())
    for epoch in range(epochs):
        n_steps = n_global_batches(n_rows, estimator.batch_size)
        parts = {
            s: shard_parts(len(y), n_steps, seed=seed, epoch=epoch, shard=s)
            for s, (_, y) in shards.items()
        }
        estimator.model.train()
        for k in range(n_steps):
            x = np.concatenate([shards[s][0][parts[s][k]] for s in sorted(shards)])
            y = np.concatenate([shards[s][1][parts[s][k]] for s in sorted(shards)])
            estimator.optimizer.zero_grad()
            estimator.loss(estimator.model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            estimator.optimizer.step()
        if estimator.lr_scheduler is not None:
            estimator.lr_scheduler.step()
    return estimator


def _digits_shards(n_shards):
    data = mh.datasets.digits(seed=0)
    x, y = data.train.x, data.train.y
    return {s: (x[s::n_shards], y[s::n_shards]) for s in range(n_shards)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-memory", "gloo"])
@pytest.mark.parametrize("assignment", [[[0, 2], [1, 3]], [[0], [1, 2], [3]], [[0, 1, 2, 3]]])
def test_a_group_epoch_is_sgd_over_the_global_batches(assignment, shared_memory, device, tmp_path):
    """Members in threads (meeting through files), against the plain loop: equal to float
    tolerance whatever the members hold, members bit-identical, per-shard sums right."""
    shards = _digits_shards(4)
    n_rows = sum(len(y) for _, y in shards.values())
    torch.manual_seed(0)
    members = [make_estimator({"lr": 0.01}) for _ in assignment]
    for member in members[1:]:
        member.model.load_state_dict(members[0].model.state_dict())
    for member in members:
        member.place(device)
    results = {}

    def member(rank):
        ranks = tuple(range(len(assignment)))
        spec = GroupSpec(ranks, rank, str(tmp_path / "rendezvous"), shared_memory=shared_memory)
        with group_channel(spec) as channel:
            for epoch in range(2):
                parts = [ShardPart(s, *shards[s]) for s in assignment[rank]]
                results[rank, epoch] = group_train_pass(
                    members[rank], parts, seed=SEED, epoch=epoch, n_rows=n_rows,
                    all_reduce=channel.all_reduce,
                )  # fmt: skip
                members[rank].end_epoch()

    threads = [threading.Thread(target=member, args=(r,)) for r in range(len(assignment))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 2 * len(assignment), "a member did not finish"
    torch.manual_seed(0)
    reference = _sgd_over_global_batches(make_estimator({"lr": 0.01}), shards, seed=SEED, epochs=2)
    atol = 2e-6 if device == "cpu" else 1e-4  # a GPU's kernels round differently
    for name, tensor in reference.model.state_dict().items():
        for member in members:
            got = member.model.state_dict()[name]
            assert got.device.type == device
            torch.testing.assert_close(got.cpu(), tensor, atol=atol, rtol=0)
        for member in members[1:]:
            assert torch.equal(member.model.state_dict()[name], members[0].model.state_dict()[name])
    for rank, owned in enumerate(assignment):
        rows = {s: r.n for s, r in results[rank, 0].items()}
        assert rows == {s: len(shards[s][1]) for s in owned}
        assert all(math.isfinite(r.loss_sum) and r.loss_sum > 0 for r in results[rank, 1].values())


def test_global_batches_take_every_row_once_in_near_equal_parts():
    parts = shard_parts(101, 7, seed=1, epoch=2, shard=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(101))
    assert {len(p) for p in parts} == {14, 15}
    assert n_global_batches(1797, 32) == 57
    assert [p.tolist() for p in parts] != [
        p.tolist() for p in shard_parts(101, 7, seed=1, epoch=3, shard=3)
    ]


# -- the scheduler ---------------------------------------------------------------------------
def _steps(visits):
    return sorted((s.kind.value, s.shard) for v in visits for s in v.steps)


def test_a_group_visit_gives_each_member_its_shards_training_and_evaluation():
    scheduler = MOPScheduler(2, n_shards=4, hybrid="on", seed=3)
    scheduler.add_mst(0, 2)
    visits = scheduler.assign([0, 1])
    assert [v.worker for v in visits] == [0, 1]
    assert all(v.group == (0, 1) for v in visits)
    for v in visits:  # worker w owns shards w, w + 2
        assert {s.shard for s in v.steps} == {v.worker, v.worker + 2}
        assert [s.kind for s in v.steps].count(StepKind.TRAIN) == 2
        assert {s.epoch for s in v.steps} == {0}
    assert len(_steps(visits)) == 8
    assert scheduler.is_busy(0) and scheduler.is_busy(1)
    joined = Visit(0, 0, tuple(s for v in visits for s in v.steps), (0, 1))
    scheduler.complete(joined, [0.1] * 8)
    assert not scheduler.is_busy(1)
    assert {v.steps[0].epoch for v in scheduler.assign([0, 1])} == {1}


def test_a_requeued_group_epoch_runs_again_in_plan_order():
    scheduler = MOPScheduler(2, hybrid="on", seed=3)
    scheduler.add_mst(0, 1)
    planned = list(scheduler._state(0).pending)
    visits = scheduler.assign([0, 1])
    joined = Visit(0, 0, tuple(s for v in reversed(visits) for s in v.steps), (0, 1))
    scheduler.requeue(joined)
    assert list(scheduler._state(0).pending) == planned
    scheduler.fail(Visit(0, 0, tuple(s for v in scheduler.assign([0, 1]) for s in v.steps), (0, 1)))
    assert scheduler.finished


def test_a_group_waits_for_its_busy_members_and_keeps_the_idle_ones():
    scheduler = MOPScheduler(2, hybrid="on", seed=3)
    scheduler.add_mst(0, 1)
    scheduler.add_mst(1, 1)
    first = scheduler.assign([0, 1])
    assert {v.mst_id for v in first} == {0} and len(first) == 2
    joined = Visit(0, 0, tuple(s for v in first for s in v.steps), (0, 1))
    scheduler.complete(joined, [0.1] * len(joined.steps))
    assert {v.mst_id for v in scheduler.assign([0, 1])} == {1}


def test_auto_groups_only_when_few_msts_can_run_and_not_after_a_slower_group():
    few = MOPScheduler(4, hybrid="auto", seed=3)
    few.add_mst(0, 3)
    few.add_mst(1, 3)
    assert all(v.group for v in few.assign([0, 1, 2, 3]))
    many = MOPScheduler(4, hybrid="auto", seed=3)
    for mst in range(3):
        many.add_mst(mst, 3)
    assert not any(v.group for v in many.assign([0, 1, 2, 3]))
    # One worker would have needed 2 x (1.0 - 0.6) s for what the group did in 1.0 s.
    alone = MOPScheduler(2, hybrid="auto", seed=3)
    alone.add_mst(0, 3)
    visits = alone.assign([0, 1])
    joined = Visit(0, 0, tuple(s for v in visits for s in v.steps), (0, 1))
    seconds = [1.0 if s.kind is StepKind.TRAIN else 0.01 for s in joined.steps]
    alone.complete(joined, seconds, allreduce_seconds=0.6)
    assert not any(v.group for v in alone.assign([0, 1]))


def _groups(visits):
    return {v.mst_id: v.group for v in visits}


def _epoch_shards(visits, mst_id):
    return sorted(s.shard for v in visits if v.mst_id == mst_id for s in v.steps
                  if s.kind is StepKind.TRAIN)  # fmt: skip


@pytest.mark.parametrize(("replicas", "n_msts", "size"), [(2, 2, 4), (8, 4, 2), (8, 1, 8)])
def test_groups_smaller_than_the_pool_share_it_when_replicas_let_them_hold_every_shard(
    replicas, n_msts, size
):
    """8 workers: with each shard on 2 of them, 4 workers hold them all, so 2 MSTs train in
    2 groups of 4 at once; with every worker holding everything, 4 MSTs in 4 groups of 2; a
    lone MST gets the whole pool."""
    scheduler = MOPScheduler(8, n_shards=8, hybrid="on", seed=3,
                             holdings=replicated_holdings(8, replicas, 8))  # fmt: skip
    for mst in range(n_msts):
        scheduler.add_mst(mst, 2)
    visits = scheduler.assign(range(8))
    groups = _groups(visits)
    assert sorted(groups) == list(range(n_msts)) and {len(g) for g in groups.values()} == {size}
    assert sorted(w for g in groups.values() for w in g) == sorted({v.worker for v in visits})
    for mst, group in groups.items():
        assert _epoch_shards(visits, mst) == list(range(8))  # every shard once, in the group
        for v in visits:
            if v.mst_id == mst:
                assert v.worker in group
                assert all(s.shard in scheduler.holdings()[v.worker] for s in v.steps)


def _complete_group(scheduler, visits, train_seconds, allreduce_seconds):
    joined = Visit(visits[0].mst_id, visits[0].group[0],
                   tuple(s for v in visits for s in v.steps), visits[0].group)  # fmt: skip
    seconds = [train_seconds if s.kind is StepKind.TRAIN else 0.0 for s in joined.steps]
    scheduler.complete(joined, seconds, allreduce_seconds=allreduce_seconds)


@pytest.mark.parametrize(("allreduce", "size"), [(0.01, 8), (0.78, 4), (0.99, 0)])
def test_auto_sizes_a_group_from_its_measured_compute_and_allreduce(allreduce, size):
    """A lone MST on 8 workers that all hold every shard: untried, it gets all 8; then the
    size whose predicted epoch time is least (compute / k + all-reduce growing with k - 1):
    cheap all-reduce keeps 8, dearer picks fewer, one that costs more than it saves goes
    back to one worker (size 0 here: no group)."""
    scheduler = MOPScheduler(8, n_shards=8, hybrid="auto", seed=3,
                             holdings=replicated_holdings(8, 8, 8))  # fmt: skip
    scheduler.add_mst(0, 3)
    first = scheduler.assign(range(8))
    assert len(first) == 8 and len(first[0].group) == 8
    # Each member's share of the pass: 1 s of which `allreduce` waiting on the others.
    _complete_group(scheduler, first, 1.0, allreduce)
    visits = scheduler.assign(range(8))
    assert (len(visits[0].group) if visits[0].group else 0) == size


@pytest.mark.parametrize(("waited_at_16", "size"), [(0.45, 16), (2.0, 8)])
def test_auto_tries_a_larger_group_once_and_keeps_the_size_its_measurements_favour(
    waited_at_16, size
):
    """16 workers that all hold every shard. Two MSTs: groups of 8. Once MST 0 is alone,
    its best size by the one size measured is the largest measured, so it tries twice
    that (16) once; then the all-reduce fitted on both sizes decides: one that hardly
    grows (a ring) keeps 16, one that grows fast goes back to 8."""
    scheduler = MOPScheduler(16, n_shards=16, hybrid="auto", seed=3,
                             holdings=replicated_holdings(16, 16, 16))  # fmt: skip
    scheduler.add_mst(0, 4)
    scheduler.add_mst(1, 1)
    visits = scheduler.assign(range(16))
    assert {mst: len(g) for mst, g in _groups(visits).items()} == {0: 8, 1: 8}
    for mst in (0, 1):  # each member: 2 steps of 1 s, 0.4 s of it in all-reduce
        _complete_group(scheduler, [v for v in visits if v.mst_id == mst], 1.0, 0.4)
    probe = scheduler.assign(range(16))
    assert len(probe) == 16 == len(probe[0].group)  # MST 1 is done: MST 0 alone tries 16
    # The same compute (12.8 s in all), one step each, with `waited_at_16` in all-reduce.
    _complete_group(scheduler, probe, 0.8 + waited_at_16, waited_at_16)
    assert len(scheduler.assign(range(16))[0].group) == size


def test_bad_hybrid_values_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="hybrid must be 'off'.*'auto'.*'on'.*got 'yes'"):
        MOPScheduler(2, hybrid="yes")
    with pytest.raises(ConfigError, match="hybrid must be"):
        mh.GridSearch(make_estimator, {"lr": 0.01}, epochs=1, hybrid=True)
    assert MOPScheduler(2).hybrid is Hybrid.OFF


# -- real runs ---------------------------------------------------------------------------------
def _fit(
    tmp_path, name, hybrid, lrs=(0.01, 0.003), epochs=2, factory=make_estimator, executor=None
):
    search = mh.GridSearch(
        factory, {"lr": mh.grid(list(lrs))}, epochs=epochs, seed=11, hybrid=hybrid
    )
    return search.fit(
        mh.datasets.digits(seed=0), n_workers=2, run_name=name, run_dir=tmp_path / name,
        store=f"sqlite:///{tmp_path / 'runs.db'}",
        executor=executor or mh.LocalExecutor(threads_per_worker=1, replicas=1),
    )  # fmt: skip


def _untimed(history):
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in history]


@pytest.fixture(scope="module")
def hybrid_runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("hybrid")
    return tmp_path, _fit(tmp_path, "on-a", "on"), _fit(tmp_path, "on-b", "on")


def test_a_hybrid_run_is_sgd_over_global_batches_and_reproducible(hybrid_runs):
    _, first, second = hybrid_runs
    digits = mh.datasets.digits(seed=0)
    shards = {s: (split[0].x, split[0].y) for s, split in enumerate(shard_splits(digits, 2, 11))}
    for record, again in zip(first.msts, second.msts, strict=True):
        assert record.status is mh.MSTStatus.COMPLETED
        assert _untimed(record.history) == _untimed(again.history)  # the same run, bit for bit
        torch.set_num_threads(1)
        torch.manual_seed(record.seed)
        with denormals_flushed():  # as in the workers
            reference = _sgd_over_global_batches(
                make_estimator(record.params), shards, seed=record.seed, epochs=2
            )
        state = state_from_bytes(Path(record.checkpoint).read_bytes())
        for name, tensor in reference.model.state_dict().items():
            torch.testing.assert_close(state["model"][name], tensor, atol=2e-6, rtol=0)


def test_a_group_epoch_whose_member_is_killed_runs_again_to_the_same_result(hybrid_runs):
    """Members killed as they get their share of a group epoch (the others wait for them
    to join, then give up when the driver aborts the group): each such epoch runs again
    from the MST's last state, and the run ends as the undisturbed one."""
    from modelhopper.testing import ChaosExecutor, KillPlan

    tmp_path, undisturbed, _ = hybrid_runs
    plan = KillPlan(running={2: False, 5: False})
    executor = ChaosExecutor(plan, threads_per_worker=1, max_restarts=4, replicas=1)
    killed = _fit(tmp_path, "killed", "on", executor=executor)
    assert len(executor.kills) == 2 and sum(executor.restarts) == 2
    for record, reference in zip(killed.msts, undisturbed.msts, strict=True):
        assert record.status is mh.MSTStatus.COMPLETED
        assert _untimed(record.history) == _untimed(reference.history)


KILLED_DRIVER = """
import sys
import torch
from torch import nn
import modelhopper as mh
from modelhopper.testing import ChaosExecutor, KillPlan


def make_estimator(p):
    model = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    return mh.Estimator(
        model, optimizer, nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32,
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
    )


url, run_dir = sys.argv[1:]
search = mh.GridSearch(make_estimator, {"lr": mh.grid([0.01, 0.003])}, epochs=2, seed=11,
                       hybrid="on")
search.fit(mh.datasets.digits(seed=0), n_workers=2, run_name="killed-driver", store=url,
           run_dir=run_dir, executor=ChaosExecutor(KillPlan(driver=7), threads_per_worker=1,
                                                   replicas=1))
"""


def test_a_driver_killed_during_a_group_epoch_resumes_to_the_same_result(hybrid_runs):
    """The driver's process is killed (SIGKILL) as it hands out the first member's share
    of the last group epoch (of 4); the run resumes and ends with the uninterrupted run's
    metrics (the same estimator as ``make_estimator``, defined in the driver's script)."""
    import signal
    import subprocess
    import sys

    tmp_path, undisturbed, _ = hybrid_runs
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_DRIVER, url, str(tmp_path / "killed-driver")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    store = open_store(url)
    assert len(store.list_steps("killed-driver")) < 2 * 2 * 4  # the last epoch is not in
    store.close()
    resumed = mh.resume(
        "killed-driver", store=url, executor=mh.LocalExecutor(threads_per_worker=1, replicas=1)
    )
    for record, reference in zip(resumed.msts, undisturbed.msts, strict=True):
        assert record.status is mh.MSTStatus.COMPLETED
        assert _untimed(record.history) == _untimed(reference.history)


def test_the_store_records_each_group_epoch_and_who_ran_each_step(hybrid_runs):
    tmp_path, first, _ = hybrid_runs
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    events = [e for e in store.list_events("on-a") if e.kind == EventKind.GROUP_EPOCH]
    assert len(events) == 2 * 2  # 2 MSTs x 2 epochs
    for event in events:
        detail = event.detail if isinstance(event.detail, dict) else json.loads(event.detail)
        assert detail["workers"] == [0, 1] and detail["shards"] == {"0": [0], "1": [1]}
        assert detail["steps"] == math.ceil(sum(detail["rows"].values()) / 32)
    for record in first.msts:
        for step in store.list_steps("on-a", record.id):
            assert step.worker == step.shard  # one copy: each shard's holder ran its steps
    # The timeline (dashboard, Result.plot) shows each group epoch as a visit per member.
    visits = visits_of(store.list_steps("on-a"))
    assert sorted((v["mst_id"], v["epoch"], v["worker"], v["steps"]) for v in visits) == [
        (mst, epoch, worker, 2) for mst in (0, 1) for epoch in (0, 1) for worker in (0, 1)
    ]  # fmt: skip


def test_two_groups_of_two_train_side_by_side_on_four_workers_as_sgd_over_global_batches(
    tmp_path,
):
    """4 workers that all hold the (small) data: 2 MSTs start in 2 groups of 2 at once, and
    each MST's weights are still SGD over its global batches. (Later epochs' groups follow
    timing: an MST whose partner has finished takes all 4 workers.)"""
    digits = mh.datasets.digits(seed=0)
    search = mh.GridSearch(make_estimator, {"lr": mh.grid([0.01, 0.003])}, epochs=2, seed=11,
                           hybrid="on")  # fmt: skip
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result = search.fit(digits, n_workers=4, n_shards=4, run_name="pairs", store=url,
                        run_dir=tmp_path / "pairs",
                        executor=mh.LocalExecutor(threads_per_worker=1, replicas=4))  # fmt: skip
    events = [e.detail for e in open_store(url).list_events("pairs")
              if e.kind == EventKind.GROUP_EPOCH]  # fmt: skip
    assert len(events) == 2 * 2 and all(len(e["workers"]) in (2, 4) for e in events)
    first = {tuple(e["workers"]) for e in events if e["epoch"] == 0}
    assert first == {(0, 1), (2, 3)}  # side by side
    shards = {s: (split[0].x, split[0].y) for s, split in enumerate(shard_splits(digits, 4, 11))}
    for record in result.msts:
        torch.set_num_threads(1)
        torch.manual_seed(record.seed)
        with denormals_flushed():
            reference = _sgd_over_global_batches(
                make_estimator(record.params), shards, seed=record.seed, epochs=2
            )
        state = state_from_bytes(Path(record.checkpoint).read_bytes())
        for name, tensor in reference.model.state_dict().items():
            torch.testing.assert_close(state["model"][name], tensor, atol=2e-6, rtol=0)


def test_auto_trains_a_lone_mst_in_a_group_and_many_msts_on_mop(tmp_path):
    lone = _fit(tmp_path, "auto-one", "auto", lrs=(0.01,), epochs=1)
    many = _fit(tmp_path, "auto-many", "auto", lrs=(0.01, 0.003, 0.001), epochs=1)
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    grouped = {
        name: sum(e.kind == EventKind.GROUP_EPOCH for e in store.list_events(name))
        for name in ("auto-one", "auto-many")
    }
    assert grouped == {"auto-one": 1, "auto-many": 0}
    assert lone.msts[0].status is many.msts[0].status is mh.MSTStatus.COMPLETED


def _sgd_estimator(p):
    model = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=p["lr"])
    return mh.Estimator(model, optimizer, nn.CrossEntropyLoss(), batch_size=32)


def test_a_diverging_group_mst_fails_alone(tmp_path):
    with pytest.warns(UserWarning, match="failed: the gradient became NaN or infinite"):
        result = _fit(tmp_path, "nan", "on", lrs=(0.01, 1e12), factory=_sgd_estimator)
    status = {r.params["lr"]: r.status for r in result.msts}
    assert status == {0.01: mh.MSTStatus.COMPLETED, 1e12: mh.MSTStatus.FAILED}


class _NoGroups(mh.LocalExecutor):
    groups = False  # as an executor that cannot run groups


def test_an_executor_without_groups_refuses_hybrid_before_anything_starts(tmp_path):
    search = mh.GridSearch(make_estimator, {"lr": 0.01}, epochs=1, hybrid="auto")
    with pytest.raises(ConfigError, match="_NoGroups cannot train an MST data-parallel.*'off'"):
        search.fit(
            mh.datasets.digits(seed=0), n_workers=2, run_dir=tmp_path / "r",
            store=f"sqlite:///{tmp_path / 'runs.db'}", executor=_NoGroups(),
        )  # fmt: skip
    assert not (tmp_path / "r" / "shards").exists()


def test_auto_compares_a_group_epoch_with_the_msts_own_epochs_on_one_worker():
    """An MST that trained on one worker first is judged against those epochs: 0.3 s per
    sub-epoch on 2 shards (0.6 s alone) against a group epoch of 0.7 s."""
    scheduler = MOPScheduler(2, hybrid="auto", seed=3)
    scheduler.add_mst(0, 8)
    scheduler.add_mst(1, 1)
    scheduler.add_mst(2, 1)
    for _ in range(50):  # MSTs 1 and 2 end after one epoch; then MST 0 is alone
        visits = scheduler.assign([0, 1])
        if visits[0].group:
            break
        for visit in visits:
            scheduler.complete(visit, [0.3 if s.kind is StepKind.TRAIN else 0.01
                                       for s in visit.steps])  # fmt: skip
    assert visits[0].mst_id == 0
    joined = Visit(0, 0, tuple(s for v in visits for s in v.steps), (0, 1))
    seconds = [0.7 if s.kind is StepKind.TRAIN else 0.01 for s in joined.steps]
    scheduler.complete(joined, seconds, allreduce_seconds=0.0)  # 0.7 s: slower than 0.6 s
    assert not any(v.group for v in scheduler.assign([0, 1]))


# -- the simulator ------------------------------------------------------------------------------
def _simulated(hybrid, allreduce):
    from modelhopper.scheduling import simulate

    scheduler = MOPScheduler(4, hybrid=hybrid, seed=1)
    scheduler.add_mst(0, 4)
    result = simulate(
        scheduler, lambda mst, step: 1.0 if step.kind is StepKind.TRAIN else 0.2,
        allreduce_seconds=lambda mst, k: allreduce,
    )  # fmt: skip
    groups = sum(1 for _, _, v in result.trace if v.group and v.worker == v.group[0])
    return result.makespan, groups


def test_the_simulator_runs_group_epochs_and_auto_drops_a_slower_group():
    alone, _ = _simulated("off", 0.0)
    assert alone == pytest.approx(4 * 4 * 1.2)  # 4 epochs x 4 shards, one worker at a time
    grouped, groups = _simulated("auto", 0.1)
    assert groups == 4 and grouped == pytest.approx(4 * (1.0 + 0.1 + 0.2))
    slow, groups = _simulated("auto", 10.0)  # the all-reduce outweighs the 3 s it saves
    assert groups == 1 and slow == pytest.approx(11.2 + 3 * 4 * 1.2)


def test_auto_keeps_groups_only_while_their_speedup_is_over_half_the_msts_that_could_run():
    """A group runs one MST on the whole pool; MOP would run the four side by side: a
    group measured 1.5x faster than one worker loses to that (1.5 <= 4 / 2), one 3.6x
    faster wins, and 1.5 still loses to the three left (1.5 <= 3 / 2)."""
    scheduler = MOPScheduler(8, hybrid="auto", seed=3)
    for mst in range(4):
        scheduler.add_mst(mst, 3)

    def group_epoch(waited):
        visits = scheduler.assign(range(8))
        assert len(visits) == 8 and all(v.group == tuple(range(8)) for v in visits)
        steps = tuple(s for v in visits for s in v.steps)
        joined = Visit(visits[0].mst_id, 0, steps, visits[0].group)
        # Each member's one training step: its share of the group's 1.0 s of training.
        seconds = [1.0 if s.kind is StepKind.TRAIN else 0.01 for s in joined.steps]
        scheduler.complete(joined, seconds, allreduce_seconds=waited)
        return joined.mst_id

    # One worker: 8 x (1 - 0.8125) = 1.5 s, the group 1.0 s: 1.5x; or 3.6x with 0.55 s.
    # Untried MSTs go first (the most work left); then MST 1, at 3.6 > 4 / 2, keeps its
    # group to its end; the others, at 1.5, train on MOP.
    order = [group_epoch(waited) for waited in (0.8125, 0.55, 0.8125, 0.8125, 0.55, 0.55)]
    assert order == [0, 1, 2, 3, 1, 1]
    visits = scheduler.assign(range(8))
    assert visits and not any(v.group for v in visits)


class _NotAnEstimator:
    """A Trainable that is not a PyTorch ``Estimator`` (as ``KerasEstimator`` is not)."""

    def __init__(self, inner):
        self._inner = inner
        self.model, self.batch_size = inner.model, inner.batch_size
        self.metrics, self.representation = inner.metrics, inner.representation

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _not_an_estimator(p):
    return _NotAnEstimator(make_estimator(p))


def test_auto_trains_an_mst_that_cannot_group_on_one_worker_and_on_refuses_it(tmp_path):
    alone = _fit(tmp_path, "wrapped-off", "off", lrs=(0.01,), factory=_not_an_estimator)
    auto = _fit(tmp_path, "wrapped-auto", "auto", lrs=(0.01,), factory=_not_an_estimator)
    assert auto.msts[0].status is mh.MSTStatus.COMPLETED
    assert _untimed(auto.msts[0].history) == _untimed(alone.msts[0].history)
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    assert not any(e.kind is EventKind.GROUP_EPOCH for e in store.list_events("wrapped-auto"))
    refused = "group trains PyTorch Estimators only; this MST's is a _NotAnEstimator"
    with pytest.raises(mh.AllMSTsFailedError, match=refused), pytest.warns(UserWarning):
        _fit(tmp_path, "wrapped-on", "on", lrs=(0.01,), factory=_not_an_estimator)
