"""The LCBench surrogate loader and the SurrogateExecutor running the real engine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelhopper as mh
from modelhopper.data._sharding import ShardInfo
from modelhopper.errors import ConfigError, DataError, ExecutorError
from modelhopper.executors import StateSource, VisitResult, VisitTask
from modelhopper.scheduling import Step, StepKind
from modelhopper.store import SQLStore

pytest.importorskip("onnxruntime")

from modelhopper.testing import (  # noqa: E402 - after the skip
    LCBench,
    SimulatedTimeUp,
    SurrogateExecutor,
    surrogate_dataset,
    surrogate_estimator,
)
from modelhopper.testing._lcbench import (  # noqa: E402
    LCBENCH_HYPERPARAMETERS,
    LCBENCH_TARGETS,
    default_path,
)

try:
    default_path()
except DataError as e:
    pytest.skip(str(e), allow_module_level=True)

TASK = 3945
SENSIBLE = {
    "batch_size": 64,
    "learning_rate": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "num_layers": 3,
    "max_units": 256,
    "max_dropout": 0.1,
}
# (task, config, epoch) -> (time, val_accuracy, val_cross_entropy, val_balanced_accuracy,
# test_cross_entropy, test_balanced_accuracy), computed with yahpo_gym 1.0.2's own
# BenchmarkSet("lcbench", instance=task).objective_function (its feeding code; ConfigSpace
# stubbed only for ordering) on the same model.onnx.
YAHPO_REFERENCE = [
    (
        3945,
        {"batch_size": 91, "learning_rate": 0.0031622777, "momentum": 0.545,
         "weight_decay": 0.050005, "num_layers": 3, "max_units": 256, "max_dropout": 0.5},
        26,
        (102.431, 92.3536, 0.4047, 0.6708, 0.5513, 0.6557),
    ),
    (
        7593,
        {"batch_size": 32, "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 0.001,
         "num_layers": 2, "max_units": 512, "max_dropout": 0.1},
        52,
        (770.5818, 73.5565, 0.5517, 0.7616, 1.5028, 0.773),
    ),
    (
        126025,
        {"batch_size": 256, "learning_rate": 0.001, "momentum": 0.5, "weight_decay": 0.01,
         "num_layers": 4, "max_units": 128, "max_dropout": 0.3},
        1,
        (9.0335, 44.3755, 0.6154, 0.4909, 0.6781, 0.4936),
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def bench() -> LCBench:
    return LCBench()


# -- the loader ----------------------------------------------------------------------
def test_tasks_and_space_come_from_config_space(bench: LCBench) -> None:
    assert len(bench.tasks) == 34 and {3945, 7593, 126025, 189908} <= set(bench.tasks)
    space = mh.Space(bench.space())
    assert space.names == LCBENCH_HYPERPARAMETERS
    rng = np.random.default_rng(0)
    for _ in range(20):
        config = bench.config(space.sample(rng))
        assert 16 <= config["batch_size"] <= 512 and config["batch_size"] == round(
            config["batch_size"]
        )
        assert config["num_layers"] in {1, 2, 3, 4, 5}
    hps = bench.hyperparameters()
    assert list(hps) == list(LCBENCH_HYPERPARAMETERS)
    assert hps["batch_size"] == {
        "name": "batch_size", "type": "uniform_int", "log": True, "lower": 16, "upper": 512,
        "default": 91,
    }  # fmt: skip
    hps["batch_size"]["lower"] = 0  # a copy: the bench's own is untouched
    assert bench.hyperparameters()["batch_size"]["lower"] == 16


@pytest.mark.parametrize(("task", "config", "epoch", "expected"), YAHPO_REFERENCE)
def test_predictions_match_yahpo_gym(
    bench: LCBench, task: int, config: dict[str, float], epoch: int, expected: tuple[float, ...]
) -> None:
    got = bench.predict(task, [config], epoch)
    assert [round(float(got[name][0]), 4) for name in LCBENCH_TARGETS] == pytest.approx(
        expected, abs=2e-4
    )


@pytest.mark.parametrize("task", [7593, 167104, 189905, 189906, 189908])
def test_val_accuracy_rises_with_epoch_for_a_sensible_config(bench: LCBench, task: int) -> None:
    curve = bench.curves(task, [SENSIBLE])
    accuracy, loss = curve["val_accuracy"][0], curve["val_cross_entropy"][0]
    early = [accuracy[e - 1] for e in (1, 5, 10, 26)]
    assert early == sorted(early) and early[-1] > early[0] + 20
    assert accuracy[51] >= accuracy[25] - 1.0
    assert loss[51] < loss[0]


def test_values_lie_in_lcbench_ranges(bench: LCBench) -> None:
    space = mh.Space(bench.space())
    rng = np.random.default_rng(1)
    configs = [space.sample(rng) for _ in range(100)]
    seconds = {}
    for task in (7593, 126025, 189905, 189906, 189908):
        curve = bench.curves(task, configs)
        assert np.all((curve["val_accuracy"] >= 0) & (curve["val_accuracy"] <= 100))  # percent
        for name in ("val_balanced_accuracy", "test_balanced_accuracy"):  # fractions
            assert np.all((curve[name] >= 0) & (curve[name] <= 1))
        assert np.all(curve["val_cross_entropy"] > 0) and np.all(curve["test_cross_entropy"] > 0)
        # time is cumulative: positive, and far larger after 52 epochs than after 1
        assert np.all(curve["time"] > 0)
        ratio = curve["time"][:, 51] / curve["time"][:, 0]
        assert np.all(ratio > 3) and np.median(ratio) > 10
        assert np.all(curve["epoch_seconds"] >= 0)
        np.testing.assert_allclose(
            curve["epoch_seconds"].sum(axis=1), curve["time"].max(axis=1), rtol=1e-9
        )
        seconds[task] = float(np.median(curve["epoch_seconds"]))
    # The task codes reach the right tasks: covertype (581k rows) and Fashion-MNIST (70k
    # images) take far longer per epoch than car (1.7k rows) and segment (2.3k rows).
    assert min(seconds[7593], seconds[189908]) > 5 * max(seconds[189905], seconds[189906])
    # Ten classes: Fashion-MNIST starts near chance, and good configs pass 85%.
    fashion = bench.curves(189908, configs)["val_accuracy"]
    assert np.median(fashion[:, 0]) < 30 and fashion[:, 51].max() > 85


def test_predictions_are_deterministic_and_vectorised(bench: LCBench) -> None:
    configs = [SENSIBLE, bench.defaults()]
    first = bench.predict(TASK, configs, [3, 40])
    again = LCBench(bench.path).predict(TASK, configs, [3, 40])
    one_by_one = [bench.predict(TASK, [c], e) for c, e in zip(configs, (3, 40), strict=True)]
    for name in LCBENCH_TARGETS:
        assert first[name].shape == (2,)
        np.testing.assert_array_equal(first[name], again[name])
        np.testing.assert_allclose(first[name], [r[name][0] for r in one_by_one], rtol=1e-6)
    grid = bench.predict(TASK, configs, np.arange(1, 53)[None, :])
    assert grid["val_accuracy"].shape == (2, 52)
    np.testing.assert_allclose(grid["val_accuracy"][:, [2, 39]].diagonal(), first["val_accuracy"])


def test_loader_errors_name_the_problem(bench: LCBench, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task 42 is not an LCBench task; pick one of"):
        bench.predict(42, [SENSIBLE], 1)
    with pytest.raises(ConfigError, match=r"params \['lr'\] are not LCBench hyperparameters"):
        bench.config({"lr": 0.1})
    with pytest.raises(ConfigError, match=r"params\['momentum'\]=2.0 is outside LCBench's range"):
        bench.config({"momentum": 2.0})
    with pytest.raises(ConfigError, match=r"epochs must be ints in \[1, 52\]"):
        bench.predict(TASK, [SENSIBLE], 53)
    with pytest.raises(DataError, match=f"{tmp_path} lacks model.onnx.*MODELHOPPER_LCBENCH"):
        LCBench(tmp_path)


def test_the_default_path_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELHOPPER_LCBENCH", str(tmp_path))
    assert default_path() != tmp_path  # no files there: the next candidate
    monkeypatch.setenv("MODELHOPPER_LCBENCH", str(LCBench().path))
    assert default_path() == LCBench().path


# -- the executor on its own ---------------------------------------------------------
def _started(bench: LCBench, n_workers: int, **kwargs: Any) -> SurrogateExecutor:
    executor = SurrogateExecutor(task=TASK, bench=bench, **kwargs)
    executor.start([ShardInfo(w, "", 1, 1, 10) for w in range(n_workers)], surrogate_estimator)
    return executor


def _train(epoch: int, shard: int, position: int) -> Step:
    return Step(StepKind.TRAIN, epoch, shard, position)


def _eval(epoch: int, shard: int, position: int) -> Step:
    return Step(StepKind.EVAL, epoch, shard, position)


def _task(mst: int, steps: tuple[Step, ...], state: Any = None, **params: Any) -> VisitTask:
    source = StateSource.FRESH if state is None else StateSource.SENT
    return VisitTask(mst, {**SENSIBLE, **params}, 0, steps, source, state)


def _one(executor: SurrogateExecutor, worker: int, task: VisitTask) -> VisitResult:
    executor.submit(worker, task)
    (result,) = executor.wait()
    return result


def test_wait_returns_the_visit_that_ends_first_in_simulated_time(bench: LCBench) -> None:
    executor = _started(bench, 2)
    seconds = bench.curves(TASK, [SENSIBLE, {**SENSIBLE, "batch_size": 16}])["epoch_seconds"]
    short, long = sorted([(seconds[0, 0] / 2, 0), (seconds[1, 0] / 2, 1)])  # half an epoch each
    executor.submit(0, _task(0, (_train(0, 0, 0),)))
    executor.submit(1, _task(1, (_train(0, 1, 0),), batch_size=16))
    first = executor.wait()
    assert [r.mst_id for r in first] == [short[1]]
    assert executor.simulated_seconds == pytest.approx(short[0])
    second = executor.wait()
    assert [r.mst_id for r in second] == [long[1]]
    assert executor.simulated_seconds == pytest.approx(long[0])
    assert all(r.error is None for r in first + second)


def test_an_epoch_reports_the_surrogate_values_once(bench: LCBench) -> None:
    executor = _started(bench, 2, eval_fraction=0.5, hop_seconds=1.0)
    a = _one(executor, 0, _task(0, (_train(0, 0, 0),)))
    b = _one(executor, 1, _task(0, (_train(0, 1, 1), _eval(0, 1, 0)), state=a.state))
    c = _one(executor, 0, _task(0, (_eval(0, 0, 1),), state=b.state))
    curve = bench.curves(TASK, [SENSIBLE])
    evals = [o.result for r in (b, c) for o in r.outcomes if o.step.kind is StepKind.EVAL]
    assert sum(p.n for p in evals) == 1
    assert sum(p.metric_sums["accuracy"] for p in evals) == curve["val_accuracy"][0, 0] / 100
    assert sum(p.loss_sum for p in evals) == curve["val_cross_entropy"][0, 0]
    assert json.loads(c.state) == {"mst": 0, "offset": 0, "trained": 2}  # type: ignore[arg-type]
    assert executor.epoch_times == {(0, 0): executor.simulated_seconds}
    # two half-epochs of training, two evaluations of 0.5 x half an epoch, two hops
    assert executor.simulated_seconds == pytest.approx(1.5 * curve["epoch_seconds"][0, 0] + 2)
    assert [v.hop for v in executor.trace] == [False, True, True]


def test_a_misplaced_or_impossible_step_fails_the_mst_saying_why(bench: LCBench) -> None:
    executor = _started(bench, 2)
    skipped = _one(executor, 0, _task(0, (_train(1, 0, 0),)))
    assert skipped.state is None and "skipped or repeated a sub-epoch" in str(skipped.error)
    early = _one(executor, 0, _task(1, (_eval(0, 0, 0),)))
    assert "evaluates epoch 0 after 0 sub-epochs" in str(early.error)
    late = _one(executor, 0, _task(2, (_train(52, 0, 0),)))
    assert "use max_epochs <= 52" in str(late.error)
    unknown = _one(executor, 0, _task(3, (_train(0, 0, 0),), lr=0.1))
    assert "are not LCBench hyperparameters" in str(unknown.error)
    nothing = _one(executor, 1, VisitTask(4, SENSIBLE, 0, (_train(0, 1, 0),), StateSource.HELD))
    assert "holds no state of MST 4" in str(nothing.error)


def test_a_warm_started_clone_continues_from_its_parents_epoch(bench: LCBench) -> None:
    executor = _started(bench, 1)
    parent = _one(executor, 0, _task(0, (_train(0, 0, 0), _eval(0, 0, 0))))
    parent = _one(executor, 0, _task(0, (_train(1, 0, 0), _eval(1, 0, 0)), state=parent.state))
    clone = VisitTask(
        1, SENSIBLE, 0, (_train(0, 0, 0), _eval(0, 0, 0)), StateSource.FRESH,
        init_state=parent.state,
    )  # fmt: skip
    result = _one(executor, 0, clone)
    curve = bench.curves(TASK, [SENSIBLE])
    assert result.outcomes[1].result.metric_sums["accuracy"] == curve["val_accuracy"][0, 2] / 100


def test_misuse_is_refused_clearly(bench: LCBench) -> None:
    with pytest.raises(ConfigError, match="task 1 is not an LCBench task"):
        SurrogateExecutor(task=1, bench=bench)
    with pytest.raises(ConfigError, match="eval_fraction must be a number >= 0, got -1"):
        SurrogateExecutor(task=TASK, bench=bench, eval_fraction=-1)
    executor = _started(bench, 1)
    with pytest.raises(ExecutorError, match="no visit in flight"):
        executor.wait()
    executor.submit(0, _task(0, (_train(0, 0, 0),)))
    with pytest.raises(ExecutorError, match="worker 0 is busy with MST 0"):
        executor.submit(0, _task(1, (_train(0, 0, 0),)))
    with pytest.raises(ExecutorError, match="already started"):
        executor.start([], surrogate_estimator)
    executor.shutdown()
    executor.shutdown()


# -- the real engine on the simulated clock --------------------------------------------
def _procedure(kind: str, bench: LCBench, seed: int = 0) -> mh.BaseProcedure:
    common: dict[str, Any] = {"metric": "val_accuracy", "direction": "maximize", "seed": seed}
    if kind == "random":
        return mh.RandomSearch(surrogate_estimator, bench.space(), n_msts=8, epochs=8, **common)
    if kind == "sha":
        return mh.SuccessiveHalving(
            surrogate_estimator, bench.space(), min_epochs=1, max_epochs=9, n_msts=9,
            reduction_factor=3, **common,
        )  # fmt: skip
    return mh.ASHA(
        surrogate_estimator, bench.space(), max_epochs=27, n_msts=30, reduction_factor=3,
        **common,
    )  # fmt: skip


class _EagerSurrogate(SurrogateExecutor):
    """Each poll hands back the next visits to finish: the driver then serves workers
    between every two checkpoint writes, the most any executor could interleave."""

    def poll(self) -> list[VisitResult]:
        try:
            return self.wait()
        except ExecutorError:  # nothing in flight
            return []


def _fit(
    kind: str, n_workers: int, bench: LCBench, tmp_path: Path, seed: int = 0, eager: bool = False
) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    executor = (_EagerSurrogate if eager else SurrogateExecutor)(task=TASK, bench=bench)
    started = time.perf_counter()
    result = _procedure(kind, bench, seed).fit(
        surrogate_dataset(n_workers), n_workers=n_workers, executor=executor,
        store=f"sqlite:///{tmp_path}/runs.db", run_dir=tmp_path / f"run-{kind}-{seed}",
    )  # fmt: skip
    return result, executor, time.perf_counter() - started


@pytest.mark.parametrize("kind", ["random", "asha"])
@pytest.mark.parametrize("n_workers", [4, 32])
def test_the_real_engine_runs_on_the_simulated_clock(
    bench: LCBench, tmp_path: Path, kind: str, n_workers: int
) -> None:
    result, executor, seconds = _fit(kind, n_workers, bench, tmp_path)
    assert seconds < 30  # real time; the simulated run takes many minutes
    curves = bench.curves(TASK, [m.params for m in result.msts])
    work, chains = 0.0, []
    for i, mst in enumerate(result.msts):
        assert mst.history, f"MST {mst.id} trained no epoch"
        epochs = [row["epoch"] for row in mst.history]
        assert epochs == list(range(len(epochs)))
        for row in mst.history:  # exactly the surrogate's values, through driver and store
            assert row["val_accuracy"] == curves["val_accuracy"][i, row["epoch"]] / 100
            assert row["val_loss"] == curves["val_cross_entropy"][i, row["epoch"]]
            assert row["train_seconds"] == pytest.approx(curves["epoch_seconds"][i, row["epoch"]])
        chain = float(curves["epoch_seconds"][i, : len(epochs)].sum())
        # an MST's epochs run one after another: its last cannot end before its chain
        assert executor.epoch_times[mst.id, len(epochs) - 1] >= chain * (1 - 1e-9)
        assert executor.finish_times[mst.id] == executor.epoch_times[mst.id, len(epochs) - 1]
        chains.append(chain)
        work += chain
    # The simulated clock is the surrogate's epoch times spread over the workers.
    assert sum(executor.busy_seconds) == pytest.approx(work, rel=1e-9)
    makespan = executor.simulated_seconds
    assert makespan == max(executor.finish_times.values())
    assert makespan >= max(work / n_workers, max(chains)) * (1 - 1e-9)
    # Greedy MOP keeps workers busy: within one longest chain of the ideal. ASHA's MSTs
    # also wait for promotions (a rung must fill first), hence its looser factor.
    assert makespan <= (work / n_workers + max(chains)) * (1.0 if kind == "random" else 1.5)
    assert result.stats.wall_seconds < makespan / 10
    assert executor.driver_seconds > 0
    if kind == "asha":  # early stopping: most MSTs stop at a low rung, the best go to 27
        lengths = sorted(len(m.history) for m in result.msts)
        assert lengths[0] == 1 and lengths[-1] == 27
        assert sum(n < 27 for n in lengths) > len(lengths) / 2


@pytest.mark.parametrize("replicas", [1, 2, "all"])
def test_replicas_let_any_holder_of_a_shard_run_its_sub_epochs(
    bench: LCBench, tmp_path: Path, replicas: int | str
) -> None:
    n_workers = 8
    executor = SurrogateExecutor(task=TASK, bench=bench, replicas=replicas)
    result = _procedure("asha", bench).fit(
        surrogate_dataset(n_workers), n_workers=n_workers, executor=executor,
        store=f"sqlite:///{tmp_path}/runs.db", run_dir=tmp_path / "run",
    )  # fmt: skip
    assert all(m.status is mh.MSTStatus.COMPLETED for m in result.msts)
    r = n_workers if replicas == "all" else replicas
    # Shard s lives on workers s, s+1, ..., s+r-1 (mod p); its steps ran on those only,
    # and with copies, on more than its home.
    ran_on: dict[int, set[int]] = {}
    for visit in executor.trace:
        for step in visit.steps:
            ran_on.setdefault(step.shard, set()).add(visit.worker)
    for shard, workers in ran_on.items():
        assert workers <= {(shard + k) % n_workers for k in range(r)}, (shard, workers)
    most = max(len(workers) for workers in ran_on.values())
    assert (most == 1) if r == 1 else (most >= 2)


def test_shared_validation_evaluates_each_epoch_where_its_training_ends(
    bench: LCBench, tmp_path: Path
) -> None:
    # Random search (8 MSTs x 8 epochs, decided by nothing) on 4 workers: the same
    # epochs and metrics with the validation parts shared or not; shared, every epoch
    # is evaluated whole in one visit, and the epochs are heard sooner.
    runs = {}
    for shared in (False, True):
        executor = SurrogateExecutor(task=TASK, bench=bench, shared_validation=shared)
        result = _procedure("random", bench).fit(
            surrogate_dataset(4), n_workers=4, executor=executor,
            store=f"sqlite:///{tmp_path}/{shared}.db", run_dir=tmp_path / f"run{shared}",
        )  # fmt: skip
        metrics = {(m.id, e["epoch"]): (e["val_accuracy"], e["val_loss"])
                   for m in result.msts for e in m.history}  # fmt: skip
        runs[shared] = (executor, metrics)
    (walked, history), (shared, same) = runs[False], runs[True]
    assert same == history and len(same) == 64
    evaluated_in = {}
    for visit in shared.trace:
        for step in visit.steps:
            if step.kind is StepKind.EVAL:
                evaluated_in.setdefault((visit.mst_id, step.epoch), set()).add(visit.start)
    assert len(evaluated_in) == 64 and all(len(v) == 1 for v in evaluated_in.values())
    assert len(shared.trace) < len(walked.trace)
    assert sum(shared.epoch_times.values()) < sum(walked.epoch_times.values())


def test_shared_validation_must_be_a_bool(bench: LCBench) -> None:
    with pytest.raises(ConfigError, match="shared_validation must be True or False"):
        SurrogateExecutor(task=TASK, bench=bench, shared_validation="yes")


def _peak_alive(trace: list[Any]) -> int:
    """Most MSTs between their first visit's start and their last visit's end at once."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for visit in trace:
        first[visit.mst_id] = min(first.get(visit.mst_id, visit.start), visit.start)
        last[visit.mst_id] = max(last.get(visit.mst_id, visit.end), visit.end)
    moments = sorted([(t, 1) for t in first.values()] + [(t, -1) for t in last.values()])
    alive = peak = 0
    for _, change in moments:  # at equal times, an end (-1) comes before a start
        alive += change
        peak = max(peak, alive)
    return peak


def _asha_on(bench: LCBench, tmp_path: Path, n_workers: int, replicas: int | str) -> Any:
    executor = SurrogateExecutor(task=TASK, bench=bench, replicas=replicas)
    search = mh.ASHA(
        surrogate_estimator, bench.space(), max_epochs=9, n_msts=64, reduction_factor=3,
        mode="stopping", metric="val_accuracy", direction="maximize", seed=3,
    )  # fmt: skip
    result = search.fit(
        surrogate_dataset(n_workers), n_workers=n_workers, executor=executor,
        store=f"sqlite:///{tmp_path}/runs.db", run_dir=tmp_path / "run",
    )  # fmt: skip
    assert len(result.msts) == 64
    return executor


def test_asha_on_every_shard_everywhere_keeps_one_mst_per_worker(
    bench: LCBench, tmp_path: Path
) -> None:
    """Every worker holds every shard: nothing waits, so no more MSTs are in flight than
    workers, and they are busy nearly all the time."""
    executor = _asha_on(bench, tmp_path, 16, "all")
    assert _peak_alive(executor.trace) <= 16


@pytest.mark.parametrize("n_workers", [4, 16])
def test_asha_on_one_copy_feeds_idle_workers_without_piling_up_msts(
    bench: LCBench, tmp_path: Path, n_workers: int
) -> None:
    """One copy of the data: a worker idle while MSTs wait for other workers' shards gets
    new MSTs only when one of the next two starts there. A new MST per idle worker piled
    them up (58 alive at once on 16 workers, each waiting for a busy worker); none left
    the workers idle (0.57 of the time busy on 4 workers, 0.43 on 16; this run measured
    0.90 and 0.57, with at most 19 and 39 MSTs alive)."""
    executor = _asha_on(bench, tmp_path, n_workers, 1)
    assert executor.utilisation > {4: 0.85, 16: 0.52}[n_workers]
    if n_workers == 16:
        assert _peak_alive(executor.trace) <= 3 * n_workers


def test_any_train_order_shortens_epochs_and_a_cut_run_resumes_where_it_stopped(
    bench: LCBench, tmp_path: Path
) -> None:
    """One copy of the data on 8 workers: taking whichever untrained shard's worker is
    free first makes the run end sooner than waiting for the planned one; cut halfway,
    the run resumes with each epoch's untrained shards, as the steps recorded."""
    n_workers, n_msts, store = 8, 16, f"sqlite:///{tmp_path}/runs.db"

    def search(order: str) -> mh.RandomSearch:
        return mh.RandomSearch(
            surrogate_estimator, bench.space(), n_msts=n_msts, epochs=3, metric="val_accuracy",
            direction="maximize", seed=2, train_order=order,
        )  # fmt: skip

    ends = {}
    for order in ("fixed", "any"):
        executor = SurrogateExecutor(task=TASK, bench=bench)
        search(order).fit(surrogate_dataset(n_workers), n_workers=n_workers, executor=executor,
                          store=store, run_name=order, run_dir=tmp_path / order)  # fmt: skip
        ends[order] = executor.simulated_seconds
    assert ends["any"] < ends["fixed"]

    cut = SurrogateExecutor(task=TASK, bench=bench, stop_at=ends["any"] / 2)
    with pytest.raises(SimulatedTimeUp):
        search("any").fit(surrogate_dataset(n_workers), n_workers=n_workers, executor=cut,
                          store=store, run_name="cut", run_dir=tmp_path / "cut")  # fmt: skip
    result = mh.resume("cut", store=store, executor=SurrogateExecutor(task=TASK, bench=bench))
    # The surrogate fails an MST whose steps skip or repeat a sub-epoch; none did.
    assert [len(m.history) for m in result.msts] == [3] * n_msts
    assert all(m.status is mh.MSTStatus.COMPLETED for m in result.msts)
    steps = SQLStore(store).list_steps("cut")
    for mst in range(n_msts):
        for epoch in range(3):
            train = [s for s in steps if (s.mst_id, s.epoch, s.kind) == (mst, epoch, "train")]
            assert sorted(s.shard for s in train) == list(range(n_workers))
            assert sorted(s.position for s in train) == list(range(n_workers))

    def order(run: str) -> dict[tuple[int, int], list[int]]:
        return {(m, e): [s.shard for s in sorted(SQLStore(store).list_steps(run),
                                                 key=lambda s: s.position)
                         if (s.mst_id, s.epoch, s.kind) == (m, e, "train")]
                for m in range(n_msts) for e in range(3)}  # fmt: skip

    # Positions number the shards in the order they ran: not the plan's.
    assert order("any") != order("fixed")


def test_replicas_must_be_a_count_or_all(bench: LCBench) -> None:
    with pytest.raises(ConfigError, match="replicas must be"):
        SurrogateExecutor(task=TASK, bench=bench, replicas=0)
    with pytest.raises(ConfigError, match="replicas=3 is more than the 2 workers"):
        _started(bench, 2, replicas=3)


def _cut_a_third_in(
    kind: str, bench: LCBench, tmp_path: Path
) -> tuple[SurrogateExecutor, SurrogateExecutor, str]:
    """The whole run on 4 workers, and the same run stopped at a third of its time (its
    store): (whole, cut, store)."""
    _, whole, _ = _fit(kind, 4, bench, tmp_path / "whole")
    cut = SurrogateExecutor(task=TASK, bench=bench, stop_at=whole.simulated_seconds / 3)
    store = f"sqlite:///{tmp_path}/runs.db"
    with pytest.raises(SimulatedTimeUp, match="reached its stop_at"):
        _procedure(kind, bench, 0).fit(
            surrogate_dataset(4), n_workers=4, executor=cut, store=store,
            run_name="cut", run_dir=tmp_path / "cut",
        )  # fmt: skip
    return whole, cut, store


def test_a_run_stops_where_its_simulated_time_is_up_keeping_what_finished(
    bench: LCBench, tmp_path: Path
) -> None:
    whole, executor, store = _cut_a_third_in("asha", bench, tmp_path)
    stop_at = whole.simulated_seconds / 3
    # Up to stop_at the cut run is the whole run, epoch for epoch and value for value.
    before = {k: t for k, t in whole.epoch_times.items() if t <= stop_at}
    assert executor.epoch_times == before and 0 < len(before) < len(whole.epoch_times)
    assert executor.epoch_accuracy == {k: whole.epoch_accuracy[k] for k in before}
    assert executor.simulated_seconds == stop_at < whole.simulated_seconds
    assert all(v.end <= stop_at for v in executor.trace)
    recorded = mh.load_result("cut", store=store)
    assert sum(len(m.history) for m in recorded.msts) == len(before)
    for mst in recorded.msts:
        for row in mst.history:
            assert row["val_accuracy"] == executor.epoch_accuracy[mst.id, row["epoch"]]
    with pytest.raises(ConfigError, match="stop_at must be"):
        SurrogateExecutor(task=TASK, bench=bench, stop_at=0)


def test_busy_time_of_a_cut_run_counts_up_to_where_it_was_cut(
    bench: LCBench, tmp_path: Path
) -> None:
    whole, executor, _ = _cut_a_third_in("random", bench, tmp_path)
    stop_at = whole.simulated_seconds / 3
    # Up to stop_at the cut run is the whole run: its visits, cut off at stop_at.
    expected = [0.0] * 4
    for visit in whole.trace:
        expected[visit.worker] += max(0.0, min(visit.end, stop_at) - visit.start)
    assert executor.busy_seconds == pytest.approx(expected, rel=1e-9)


def test_simulated_runs_are_deterministic(bench: LCBench, tmp_path: Path) -> None:
    _, first, _ = _fit("asha", 8, bench, tmp_path, seed=3)
    _, again, _ = _fit("asha", 8, bench, tmp_path / "again", seed=3)
    _, other, _ = _fit("asha", 8, bench, tmp_path / "other", seed=4)
    assert first.finish_times == again.finish_times and first.epoch_times == again.epoch_times
    assert first.simulated_seconds == again.simulated_seconds
    assert other.finish_times != first.finish_times


def test_an_epoch_is_decided_the_turn_it_arrives_however_rarely_the_driver_records(
    bench: LCBench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished epoch makes a record due at once (its MST waits for the procedure's
    decision); only other visits wait up to RECORD_INTERVAL_SECONDS to share one. So every
    epoch ends at the same simulated moment whether the driver records every turn or, but
    for epochs, never."""
    monkeypatch.setattr("modelhopper._driver.RECORD_INTERVAL_SECONDS", 0.0)
    _, every_turn, _ = _fit("asha", 8, bench, tmp_path, seed=3)
    monkeypatch.setattr("modelhopper._driver.RECORD_INTERVAL_SECONDS", 1e9)
    _, for_epochs, _ = _fit("asha", 8, bench, tmp_path / "for-epochs", seed=3)
    assert len(every_turn.epoch_times) > 50
    assert for_epochs.epoch_times == every_turn.epoch_times


@pytest.mark.parametrize("kind", ["random", "sha", "asha"])
def test_workers_served_while_the_driver_records_change_no_result(
    bench: LCBench, tmp_path: Path, kind: str
) -> None:
    """Visits that finish while the driver records are accepted then, and decided on
    before the run ends; an MST's metrics do not depend on when its visits were served."""
    result, _, _ = _fit(kind, 4, bench, tmp_path)
    eager, _, _ = _fit(kind, 4, bench, tmp_path / "eager", eager=True)
    for mst in eager.msts:
        assert mst.status in ("completed", "stopped"), (mst.id, mst.status)
    if kind == "asha":  # asynchronous: which MSTs are promoted depends on timing
        assert max(len(m.history) for m in eager.msts) == 27
        return

    # repr: the surrogate's train_loss is NaN, which == would call unequal to itself.
    # The order of an epoch's middle evaluations follows timing (it changes no result).
    def outcome(run):
        history = [{k: v for k, v in row.items() if k != "eval_order"} for row in run]
        return repr(history)

    assert [(m.params, m.status, outcome(m.history)) for m in eager.msts] == [
        (m.params, m.status, outcome(m.history)) for m in result.msts
    ]
    for mst, same in zip(eager.msts, result.msts, strict=True):  # first and last are planned
        for mine, theirs in zip(mst.history, same.history, strict=True):
            ours, planned = mine["eval_order"], theirs["eval_order"]
            assert sorted(ours) == sorted(planned) == [0, 1, 2, 3]
            assert (ours[0], ours[-1]) == (planned[0], planned[-1])


def test_asha_trades_accuracy_against_the_training_seconds_every_epoch_reports(
    bench: LCBench, tmp_path: Path
) -> None:
    """``train_seconds`` is a metric of every run: here LCBench's epoch seconds, which a
    multi-objective ASHA minimises beside maximising accuracy (Pareto-rank promotion)."""
    objectives = {"val_accuracy": "maximize", "train_seconds": "minimize"}
    search = mh.ASHA(
        surrogate_estimator, bench.space(), max_epochs=9, n_msts=24, reduction_factor=3,
        objectives=objectives, seed=2,
    )  # fmt: skip
    executor = SurrogateExecutor(task=TASK, bench=bench)
    result = search.fit(
        surrogate_dataset(4), n_workers=4, executor=executor,
        store=f"sqlite:///{tmp_path}/runs.db", run_dir=tmp_path / "run",
    )  # fmt: skip
    for mst in result.msts:
        for row in mst.history:
            simulated = executor.epoch_seconds[mst.id, row["epoch"]]
            assert row["train_seconds"] == pytest.approx(simulated, rel=1e-12)
            assert mst.params and row["train_seconds"] > 0
    front = result.pareto_front()
    points = {m.id: (m.metrics["val_accuracy"], m.metrics["train_seconds"]) for m in result.msts}
    assert front and all(
        not (a >= points[f.id][0] and s <= points[f.id][1] and (a, s) != points[f.id])
        for f in front for a, s in points.values()
    )  # fmt: skip
    off_front = set(points) - {f.id for f in front}
    assert all(
        any(a >= points[i][0] and s <= points[i][1] for a, s in (points[f.id] for f in front))
        for i in off_front
    )  # every other MST is dominated by (or equal to) one on the front
    # The second objective changes who goes on: accuracy alone promotes other MSTs.
    alone = mh.ASHA(
        surrogate_estimator, bench.space(), max_epochs=9, n_msts=24, reduction_factor=3,
        metric="val_accuracy", direction="maximize", seed=2,
    ).fit(
        surrogate_dataset(4), n_workers=4, executor=SurrogateExecutor(task=TASK, bench=bench),
        store=f"sqlite:///{tmp_path}/runs.db", run_dir=tmp_path / "alone",
    )  # fmt: skip
    assert [m.params for m in alone.msts] == [m.params for m in result.msts]
    promoted = {m.id for m in result.msts if m.epochs_done > 1}
    assert promoted and promoted != {m.id for m in alone.msts if m.epochs_done > 1}
    fastest = min(points, key=lambda i: result.msts[i].history[0]["train_seconds"])
    assert fastest in promoted  # nothing beats it on training seconds at the first rung
