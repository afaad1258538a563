"""Workers join and leave a running run (LocalExecutor): shards are re-homed, results do not
change."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import modelhopper as mh
from modelhopper import _driver
from modelhopper.cli import app
from modelhopper.commands import submit
from modelhopper.scheduling import MOPScheduler, PoolEvent, StepKind, rehome, simulate
from modelhopper.store import CommandStatus, EventKind, SQLStore
from modelhopper.testing import (
    SurrogateExecutor,
    Throttle,
    surrogate_dataset,
    surrogate_estimator,
)

SPEC = textwrap.dedent(
    """
    import torch
    from torch import nn
    import modelhopper as mh

    def make_estimator(p):
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))
        return mh.Estimator(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
                            loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=16)

    space = {"lr": mh.grid([0.02, 0.05, 0.1])}
    data = mh.datasets.digits
    search = mh.GridSearch(make_estimator, space, epochs=3, metric="val_accuracy",
                           direction="maximize", seed=6)
    """
)


# -- the plan of a change --------------------------------------------------------------------
def test_a_joiner_takes_shards_from_the_busiest_and_a_leaver_gives_to_the_idlest():
    homes, held = rehome({0: {0, 2, 4, 6}, 1: {1, 3, 5, 7}}, [0, 1, 2])
    assert sorted(len(h) for h in homes.values()) == [2, 3, 3] and held == homes
    assert set().union(*homes.values()) == set(range(8))  # every shard owned, once
    assert homes[0] <= {0, 2, 4, 6} and homes[1] <= {1, 3, 5, 7}  # only the fewest moved
    homes, held = rehome(homes, [1, 2])
    assert sorted(len(h) for h in homes.values()) == [4, 4]
    assert set().union(*homes.values()) == set(range(8))
    _, held = rehome({0: {0, 1}, 1: {2, 3}}, [0, 1, 2], replicas=3)  # small data: all hold all
    assert all(h == set(range(4)) for h in held.values())
    with pytest.raises(mh.ConfigError, match="at least one worker"):
        rehome({0: {0}}, [])


def test_the_scheduler_follows_new_holdings_and_keeps_every_shard_held():
    scheduler = MOPScheduler(2, n_shards=4, seed=1)
    for mst in range(3):
        scheduler.add_mst(mst, 2)
    assert scheduler.add_worker({2, 3}) == 2
    scheduler.set_holdings(1, {1})  # shard 3 now lives on worker 2 only
    with pytest.raises(mh.ConfigError, match=r"no worker would hold shard\(s\) \[0\]"):
        scheduler.set_holdings(0, ())
    scheduler.set_holdings(2, {0, 2, 3})
    scheduler.set_holdings(0, ())  # worker 0 left
    result = simulate(scheduler, lambda mst, step: 1.0)
    assert {v.worker for _, _, v in result.trace} == {1, 2}
    for _, _, visit in result.trace:
        assert all(s.shard in ({1} if visit.worker == 1 else {0, 2, 3}) for s in visit.steps)
    trained = [s for _, _, v in result.trace for s in v.steps if s.kind is StepKind.TRAIN]
    assert len(trained) == 3 * 2 * 4  # every MST still trains on every shard, every epoch


@pytest.mark.parametrize(
    ("start", "event", "bound"),
    [(2, PoolEvent(20, add=2), 20 + (192 - 40) / 4), (4, PoolEvent(20, remove=(0, 1)), 76.0)],
)
def test_simulated_pools_change_mid_run_as_the_driver_changes_them(start, event, bound):
    """16 MSTs x 3 epochs of 4 units each (192 in all) over 16 logical shards: the work done
    matches the pool's capacity over time, within a few percent."""
    scheduler = MOPScheduler(start, n_shards=16, seed=0)
    for mst in range(16):
        scheduler.add_mst(mst, 3)
    result = simulate(
        scheduler, lambda mst, step: 0.25 if step.kind is StepKind.TRAIN else 0.0,
        pool_events=[event],
    )  # fmt: skip
    trained = [s for _, _, v in result.trace for s in v.steps if s.kind is StepKind.TRAIN]
    assert len(trained) == 16 * 3 * 16  # every MST trained on every shard, every epoch
    assert bound <= result.makespan < 1.05 * bound
    joined = [w for w in range(scheduler.n_workers) if w >= start]
    assert all(result.busy_seconds[w] > 0 for w in joined)  # joiners took work
    for w in event.remove:  # leavers ran nothing after they left
        assert all(start_ < event.at + 1e-9 for start_, _, v in result.trace if v.worker == w)
    assert result.pool_seconds and 0.9 < result.utilisation <= 1.0


# -- a real run --------------------------------------------------------------------------------
@pytest.mark.slow
def test_workers_join_and_leave_a_running_run_and_results_do_not_change(
    tmp_path, monkeypatch, load_search, plan_metrics
):
    search, data = load_search(SPEC)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    reference = search.fit(
        data, n_workers=2, n_shards=4, executor=mh.LocalExecutor(replicas=1), store=url,
        run_dir=tmp_path / "fixed",
    )  # fmt: skip
    # Commands go in at chosen commits, and the driver looks for them at every step and
    # records after every visit: they land mid-run, whatever the load.
    store = SQLStore(url)
    commits = []
    plan = {1: {"remove": 7}, 2: {"add": 1}, 8: {"remove": 0}}

    def steer() -> None:
        commits.append(1)
        if (payload := plan.get(len(commits))) is not None:
            submit(store, "elastic", "workers", payload)

    monkeypatch.setitem(_driver.FAULTS, "record_committed", steer)
    monkeypatch.setattr(_driver, "COMMAND_POLL_SECONDS", 0.0)
    monkeypatch.setattr(_driver, "RECORD_INTERVAL_SECONDS", 0.0)
    result = search.fit(
        data, n_workers=2, n_shards=4, executor=mh.LocalExecutor(replicas=1), store=url,
        run_dir=tmp_path / "elastic", run_name="elastic",
    )  # fmt: skip
    assert plan_metrics(result) == plan_metrics(reference)
    commands = store.list_commands("elastic")
    assert [c.status for c in commands] == [
        CommandStatus.REJECTED, CommandStatus.APPLIED, CommandStatus.APPLIED
    ]  # fmt: skip
    assert "worker 7 is not in the pool; its workers are [0, 1]" in commands[0].message
    changes = [e.detail for e in store.list_events("elastic")
               if e.kind is EventKind.WORKERS_CHANGED]  # fmt: skip
    assert [c["workers"] for c in changes] == [[0, 1, 2], [1, 2]]
    steps = store.list_steps("elastic")
    assert {s.worker for s in steps} == {0, 1, 2}  # the new worker trained
    last_on_0 = max(i for i, s in enumerate(steps) if s.worker == 0)
    assert last_on_0 < len(steps) - 4  # and worker 0 left before the end
    assert result.stats.n_workers == 3  # the most at once
    store.close()


def test_executors_that_cannot_change_their_pool_reject_the_command(tmp_path, monkeypatch):
    executor = SurrogateExecutor(task=3945)
    search = mh.RandomSearch(
        surrogate_estimator, executor.bench.space(), n_msts=3, epochs=2,
        metric="val_accuracy", direction="maximize", seed=1,
    )  # fmt: skip
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = SQLStore(url)
    monkeypatch.setitem(
        _driver.FAULTS, "record_committed",
        lambda: store.list_commands("sim") or submit(store, "sim", "workers", {"add": 1}),
    )  # fmt: skip
    monkeypatch.setattr(_driver, "COMMAND_POLL_SECONDS", 0.0)
    search.fit(surrogate_dataset(2), n_workers=2, executor=executor, store=url,
               run_dir=tmp_path / "sim", run_name="sim")  # fmt: skip
    (command,) = store.list_commands("sim")
    assert command.status is CommandStatus.REJECTED
    assert "SurrogateExecutor cannot add or remove workers" in command.message
    store.close()


def test_bad_workers_commands_are_refused_before_they_are_queued(tmp_path, load_search):
    runner = CliRunner()
    assert runner.invoke(app, ["workers", "run"]).exit_code == 2
    both = runner.invoke(app, ["workers", "run", "--add", "1", "--remove", "0"])
    assert both.exit_code == 2 and "exactly one of --add N or --remove W" in both.output
    search, data = load_search(SPEC)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    search.fit(data, n_workers=2, store=url, run_dir=tmp_path / "done", run_name="done")
    ended = runner.invoke(app, ["workers", "done", "--add", "1", "--store", url])
    assert ended.exit_code != 0 and "is completed; commands reach only a running run" in (
        ended.output
    )
    store = SQLStore(url)
    for payload, message in [({"add": 0}, "add at least one worker"),
                             ({"add": 1, "remove": 0}, "a workers command is")]:  # fmt: skip
        with pytest.raises(mh.ConfigError, match=message):
            submit(store, "done", "workers", payload)
    store.close()


@pytest.mark.slow
def test_the_elastic_benchmark_runs_in_its_smoke_size(tmp_path):
    script = Path(__file__).resolve().parents[1] / "bench" / "elastic.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke-test", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "elastic_smoke.json").read_text())["results"]
    assert [r["layout"] for r in rows] == ["fixed-2", "add", "remove"]
    pools = {r["layout"]: r["pools"] for r in rows}
    assert pools == {"fixed-2": [], "add": [[0, 1]], "remove": [[1]]}
    assert all(r["max_accuracy_difference"] == 0 for r in rows)  # the same plan, bit for bit
    assert all(r["wall_seconds"] > 0 and r["best_val_accuracy"] > 0.5 for r in rows)
    assert (tmp_path / "elastic_smoke.md").read_text().startswith("# Elastic pools")


def test_a_local_executor_adds_rehomes_and_removes_workers(tmp_path):
    """At the executor: a joiner opens its shards, a re-homed worker trains on a shard it
    gained like its first holder, workers share the cores once one joins (threads are
    lowered, never raised), and a removed worker's process is gone."""
    from modelhopper.data._sharding import write_shards
    from modelhopper.testing._executor import _dataset, _task, _train, make_test_estimator

    shards = write_shards(_dataset(), 2, tmp_path / "shards", seed=3)
    with mh.LocalExecutor(threads_per_worker=None, replicas=1) as executor:
        executor.start(shards, make_test_estimator, n_workers=1)
        assert executor.holdings(shards, 1) == ((0, 1),)
        first = executor._specs[0].n_threads
        task = _task(1, (_train(0, 1, 0),))
        executor.submit(0, task)
        (alone,) = executor.wait()
        assert executor.add_worker([1], [1]) == 1
        assert executor.resident_shard_bytes[1] == shards[1].nbytes
        executor.submit(1, task)  # the same visit on the joiner: the same result
        (joined,) = executor.wait()
        assert joined.error is None and joined.outcomes[0].result.loss_sum == pytest.approx(
            alone.outcomes[0].result.loss_sum, rel=1e-6
        )
        executor.rehome(0, [0], [0])  # worker 0 drops shard 1
        assert executor.resident_shard_bytes[0] == shards[0].nbytes
        executor.submit(0, _task(2, (_train(0, 0, 0),)))
        assert executor.wait()[0].error is None
        assert executor._specs[0].n_threads == min(first, executor._specs[1].n_threads)
        pid = executor.pids[0]
        executor.remove_worker(0)
        assert pid not in executor.pids and len(executor.pids) == 1


# -- shards in proportion to measured speeds -------------------------------------------------
def test_shares_move_the_fewest_shards_to_match_them():
    homes, held = rehome({0: {0, 2, 4, 6}, 1: {1, 3, 5, 7}}, [0, 1], shares={0: 6, 1: 2})
    assert len(homes[0]) == 6 and homes[1] <= {1, 3, 5, 7} and held == homes
    assert set().union(*homes.values()) == set(range(8))


def test_the_scheduler_measures_a_worker_three_times_slower():
    scheduler = MOPScheduler(2, n_shards=8, seed=1)
    for mst in range(4):
        scheduler.add_mst(mst, 2)
    assert scheduler.worker_speeds([0, 1]) is None  # nothing timed yet
    simulate(scheduler, lambda mst, step: 1.0 + 0.5 * mst, worker_speed=[1.0, 1 / 3])
    fast, slow = scheduler.worker_speeds([0, 1])
    assert 2.0 < fast / slow < 4.5
    scheduler.reset_worker_speeds()
    assert scheduler.worker_speeds([0, 1]) is None


def make_wide_estimator(p):
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    return mh.Estimator(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
                        loss=nn.CrossEntropyLoss(), metrics=["accuracy"],
                        batch_size=16)  # fmt: skip


@pytest.mark.slow
def test_a_slower_worker_gets_fewer_shards_and_results_do_not_change(
    tmp_path, monkeypatch, plan_metrics
):
    search = mh.GridSearch(make_wide_estimator, {"lr": mh.grid([0.02, 0.05, 0.1])}, epochs=4,
                           metric="val_accuracy", direction="maximize", seed=6)  # fmt: skip
    data = mh.datasets.digits(seed=0)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    fixed = search.fit(data, n_workers=2, n_shards=8, store=url, run_dir=tmp_path / "fixed",
                       executor=mh.LocalExecutor(replicas=1, threads_per_worker=1))  # fmt: skip
    monkeypatch.setattr(_driver, "POOL_POLL_SECONDS", 0.0)
    executor = mh.LocalExecutor(replicas=1, threads_per_worker=1, rebalance=True)
    slow = Throttle(lambda: executor.pids[1] if len(executor.pids) > 1 else None)
    assert slow.slowdown == pytest.approx(3.0)  # worker 1: three times slower
    slow.start()
    try:
        result = search.fit(data, n_workers=2, n_shards=8, store=url, run_name="balanced",
                            run_dir=tmp_path / "balanced", executor=executor)  # fmt: skip
    finally:
        slow.stop()
    assert plan_metrics(result) == plan_metrics(fixed)
    store = SQLStore(url)
    changes = [e.detail for e in store.list_events("balanced")
               if e.kind is EventKind.WORKERS_CHANGED]  # fmt: skip
    assert changes and changes[0]["cause"] == "rebalanced" and changes[0]["workers"] == [0, 1]
    homes = changes[0]["homes"]
    assert len(homes["0"]) > len(homes["1"])  # the fast worker owns more shards
    steps = store.list_steps("balanced")
    later = steps[len(steps) // 2 :]  # once rebalanced, the fast worker runs most steps
    assert sum(s.worker == 0 for s in later) > sum(s.worker == 1 for s in later)
    store.close()
