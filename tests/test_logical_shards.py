"""Logical shards: more shards than workers, and results that do not depend on the workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

import modelhopper as mh
from modelhopper.scheduling import (
    MOPScheduler,
    StepKind,
    home_holdings,
    replicated_holdings,
    simulate,
    weighted_holdings,
)
from modelhopper.store import SQLStore
from modelhopper.testing import SurrogateExecutor, surrogate_dataset, surrogate_estimator

SPEC = textwrap.dedent(
    """
    import torch
    from torch import nn
    import modelhopper as mh

    def make_estimator(p):
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))
        return mh.Estimator(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
                            loss=nn.CrossEntropyLoss(), metrics=["accuracy"], batch_size=32)

    space = {"lr": mh.grid([0.05, 0.2])}
    data = mh.datasets.digits
    search = mh.GridSearch(make_estimator, space, epochs=3, metric="val_accuracy",
                           direction="maximize", seed=4)
    """
)


# -- the plan --------------------------------------------------------------------------------
def test_workers_own_every_pth_shard_and_replicas_copy_whole_workers():
    assert home_holdings(2, 6) == ((0, 2, 4), (1, 3, 5))
    assert home_holdings(3) == ((0,), (1,), (2,))  # one shard per worker, as before
    assert replicated_holdings(2, 2, 6) == ((0, 1, 2, 3, 4, 5),) * 2
    assert replicated_holdings(3, 2, 6) == ((0, 2, 3, 5), (0, 1, 3, 4), (1, 2, 4, 5))


@pytest.mark.parametrize("speeds", [[0.5, 1, 1, 1], [1, 1], [0.01, 1, 1], [3, 1, 2]])
def test_workers_own_shards_in_proportion_to_their_speed(speeds):
    n_shards = 12
    owned = weighted_holdings(speeds, n_shards)
    assert sorted(s for shards in owned for s in shards) == list(range(n_shards))  # each once
    assert all(shards for shards in owned)  # every worker owns at least one
    shares = [n_shards * speed / sum(speeds) for speed in speeds]
    assert all(abs(len(shards) - share) < 1 or len(shards) == 1
               for shards, share in zip(owned, shares, strict=True))  # fmt: skip
    with pytest.raises(mh.ConfigError, match="speeds must be one positive number per worker"):
        weighted_holdings([1, 0], 4)


@pytest.mark.parametrize(
    ("n_workers", "n_shards", "message"),
    [(4, 2, "fewer than the n_workers=4"), (2, 0, "n_shards"), (2, 2.5, "n_shards")],
)
def test_fewer_shards_than_workers_is_refused(n_workers, n_shards, message):
    with pytest.raises(mh.ConfigError, match=message):
        MOPScheduler(n_workers, n_shards=n_shards)


def _plans(n_workers: int, holdings=None) -> dict[int, list]:
    """Each MST's steps, in the order a simulated run on ``n_workers`` ran them."""
    scheduler = MOPScheduler(n_workers, n_shards=6, seed=3, holdings=holdings)
    for mst in range(5):
        scheduler.add_mst(mst, 2)
    speed = [1.0 + 0.5 * w for w in range(n_workers)]  # unequal workers
    trace = simulate(scheduler, lambda mst, step: 1.0 + 0.1 * mst, worker_speed=speed).trace
    plans: dict[int, list] = {}
    for _, _, visit in trace:
        assert all(step.shard in scheduler._held[visit.worker] for step in visit.steps)
        plans.setdefault(visit.mst_id, []).extend(visit.steps)
    return plans


def test_the_plan_is_the_same_on_any_number_of_workers():
    one_per_shard = _plans(6)
    for plans in (_plans(1), _plans(2), _plans(4), _plans(3, replicated_holdings(3, 2, 6))):
        for mst, steps in one_per_shard.items():
            train = [s for s in plans[mst] if s.kind is StepKind.TRAIN]
            assert train == [s for s in steps if s.kind is StepKind.TRAIN]  # same order
            assert Counter(plans[mst]) == Counter(steps)  # evaluations: any order
    for steps in one_per_shard.values():
        assert Counter((s.epoch, s.kind) for s in steps) == {
            (e, k): 6 for e in range(2) for k in StepKind
        }  # every epoch trains and evaluates on each of the 6 shards once


# -- real runs ---------------------------------------------------------------------------------
def test_a_run_gives_the_same_metrics_on_any_number_of_workers(tmp_path, load_search, plan_metrics):
    search, data = load_search(SPEC)
    runs = {}
    for n_workers, replicas in [(4, 1), (2, 1), (3, 1), (2, "auto")]:
        result = search.fit(
            data, n_workers=n_workers, n_shards=4, executor=mh.LocalExecutor(replicas=replicas),
            store=f"sqlite:///{tmp_path}/db.sqlite", run_dir=tmp_path / f"{n_workers}-{replicas}",
        )  # fmt: skip
        assert result.stats.n_workers == n_workers
        runs[n_workers, replicas] = plan_metrics(result)
    reference = runs.pop((4, 1))
    assert reference[-1]["val_accuracy"] > 0.5  # it learns
    for layout, metrics in runs.items():
        assert metrics == reference, layout
    # one shard per worker is a different cut of the data: other (equally valid) figures
    two = search.fit(data, n_workers=2, store=f"sqlite:///{tmp_path}/db.sqlite",
                     run_dir=tmp_path / "two")  # fmt: skip
    assert plan_metrics(two) != reference


def test_too_many_shards_for_the_data_is_a_clear_error(tmp_path, load_search):
    search, data = load_search(SPEC)
    small = mh.Dataset.from_numpy(
        data.train.x[:40], data.train.y[:40], data.validation.x[:5], data.validation.y[:5]
    )
    with pytest.raises(mh.ConfigError, match="n_shards=8 is more than the 5 validation"):
        search.fit(small, n_workers=2, n_shards=8, run_dir=tmp_path / "run",
                   store=f"sqlite:///{tmp_path}/db.sqlite")  # fmt: skip


def test_the_surrogate_executor_runs_logical_shards(tmp_path):
    def run(n_shards: int) -> tuple[dict, list[int]]:
        executor = SurrogateExecutor(task=3945)
        search = mh.RandomSearch(
            surrogate_estimator, executor.bench.space(), n_msts=4, epochs=3,
            metric="val_accuracy", direction="maximize", seed=2,
        )  # fmt: skip
        search.fit(
            surrogate_dataset(n_shards), n_workers=2, n_shards=n_shards, executor=executor,
            store=f"sqlite:///{tmp_path}/db.sqlite", run_dir=tmp_path / str(n_shards),
        )  # fmt: skip
        return executor.epoch_accuracy, sorted({v.worker for v in executor.trace})

    six, two = run(6), run(2)
    assert six == two and len(six[0]) == 4 * 3  # the curves do not depend on how data is cut


# -- recovery ------------------------------------------------------------------------------------
DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from modelhopper.cli import load_spec, spec_objects
    from modelhopper.testing import ChaosExecutor, KillPlan

    spec, url, run_dir = sys.argv[1:]
    search, data = spec_objects(load_spec(Path(spec)), Path(spec))
    search.fit(data, n_workers=2, n_shards=4, run_name="crashy", store=url, run_dir=run_dir,
               executor=ChaosExecutor(KillPlan(driver=3), replicas=1))
    """
)


@pytest.mark.slow
def test_a_resumed_run_over_logical_shards_ends_as_one_on_other_workers(
    tmp_path, load_search, plan_metrics
):
    search, data = load_search(SPEC)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    reference = search.fit(data, n_workers=4, n_shards=4, store=url, run_dir=tmp_path / "ref")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "spec.py"), url, str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, f"the driver was not killed: {done.stderr[-3000:]}"
    store = SQLStore(url)
    assert len(store.list_steps("crashy")) < 2 * 3 * 2 * 4  # interrupted mid-run
    assert store.get_experiment("crashy").spec["n_shards"] == 4
    with pytest.raises(mh.ConfigError, match="n_workers=5 is more than this run's 4 shards"):
        mh.resume("crashy", store=url, n_workers=5)
    assert store.get_experiment("crashy").status is mh.store.RunStatus.RUNNING  # untouched
    store.close()
    # killed on 2 workers, resumed on 3, compared with 4: the same metrics
    resumed = mh.resume("crashy", store=url, executor=mh.LocalExecutor(replicas=1), n_workers=3)
    assert resumed.status == "completed" and resumed.stats.n_workers == 3
    assert plan_metrics(resumed) == plan_metrics(reference)
