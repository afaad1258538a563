from __future__ import annotations

import math

import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState  # noqa: E402

from modelhopper.errors import (  # noqa: E402
    ConfigError,
    ModelHopperError,
    MSTFailedError,
    SpaceError,
)
from modelhopper.procedures._base import Decision, EpochResult  # noqa: E402
from modelhopper.procedures._optuna import OptunaSearch, TPESearch  # noqa: E402
from modelhopper.space import (  # noqa: E402
    choice,
    grid,
    loguniform,
    quniform,
    randint,
    uniform,
)
from modelhopper.testing import FakeTrainer  # noqa: E402

SPACE = {"lr": loguniform(1e-4, 1e-1), "width": choice([16, 32, 64]), "batch_size": 32}
CONTINUOUS = {"x": uniform(-1.0, 1.0), "lr": loguniform(1e-4, 1e-1)}


def _make(params):
    return None


def _loss(params, epoch):
    return (math.log10(params["lr"]) + 2) ** 2 + 0.1 * (params.get("width") != 64) + 1 / (epoch + 1)


def _bowl(params, epoch):
    return params["x"] ** 2 + (math.log10(params["lr"]) + 2) ** 2 + 1 / (epoch + 1)


def _values(trainer, procedure):
    """Each MST's last metric, as told to the study."""
    return {m.id: trainer.results(m.id)[-1].metrics[procedure.metric] for m in trainer.msts()}


# ---------------------------------------------------------------- the space as distributions


@pytest.mark.parametrize(
    ("domain", "distribution"),
    [
        (choice([16, 32, 64]), CategoricalDistribution((16, 32, 64))),
        (grid(["relu", "tanh"]), CategoricalDistribution(("relu", "tanh"))),
        (choice([[16, 16], [32]]), CategoricalDistribution((0, 1))),  # lists by index
        (uniform(0.0, 2.0), FloatDistribution(0.0, 2.0)),
        (loguniform(1e-4, 1e-1), FloatDistribution(1e-4, 1e-1, log=True)),
        (randint(1, 5), IntDistribution(1, 4)),  # randint's high is exclusive
        (quniform(0.0, 1.0, 0.25), FloatDistribution(0.0, 1.0, step=0.25)),
        (quniform(0.2, 0.6, 0.1), FloatDistribution(0.2, 0.6, step=0.1)),
    ],
)
def test_space_is_translated_to_optuna_distributions(domain, distribution):
    search = OptunaSearch(_make, {"p": domain, "fixed": 7}, n_msts=2, epochs=1)
    assert search._codec.distributions == {"p": distribution}
    assert search._codec.constants == {"fixed": 7}


@pytest.mark.parametrize(
    ("low", "high", "q", "fix"),
    [(0.0, 1.0, 0.3, "quniform(0.0, 0.9, 0.3)"), (0.05, 1.0, 0.1, "quniform(0.1, 1.0, 0.1)")],
)
def test_quniform_off_the_step_grid_is_an_error(low, high, q, fix):
    with pytest.raises(SpaceError) as info:
        OptunaSearch(_make, {"p": quniform(low, high, q)}, n_msts=2, epochs=1)
    message = str(info.value)
    assert "quniform('p') needs low and high that are multiples of q for Optuna" in message
    assert f"got low={low!r}, high={high!r}, q={q!r}" in message and fix in message


def test_sampler_argument_errors():
    with pytest.raises(ConfigError, match="sampler must be an Optuna sampler, a function seed"):
        OptunaSearch(_make, SPACE, n_msts=2, epochs=1, sampler="tpe")
    with pytest.raises(ConfigError, match="TPESearch makes its own TPESampler"):
        TPESearch(_make, SPACE, n_msts=2, epochs=1, sampler=optuna.samplers.RandomSampler())
    with pytest.raises(ConfigError, match="n_startup_trials must be an integer >= 0, got -1"):
        TPESearch(_make, SPACE, n_msts=2, epochs=1, n_startup_trials=-1)
    with pytest.raises(ConfigError, match="n_msts must be an integer >= 1, got 0"):
        TPESearch(_make, SPACE, n_msts=0, epochs=1)


# ---------------------------------------------------------------- ask and tell on a run


def _sampler(name):
    samplers = optuna.samplers
    if name == "cmaes":
        pytest.importorskip("cmaes", reason="CmaEsSampler needs the cmaes package")
        return lambda seed: samplers.CmaEsSampler(seed=seed, n_startup_trials=2)
    if name == "gp":
        pytest.importorskip("scipy", reason="GPSampler needs scipy (and torch)")
        return lambda seed: samplers.GPSampler(seed=seed, n_startup_trials=3)
    return {
        "tpe": None,
        "random": samplers.RandomSampler(seed=0),
        "nsga2": lambda seed: samplers.NSGAIISampler(seed=seed, population_size=4),
    }[name]


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "gp", "nsga2"])
def test_samplers_propose_n_msts_and_are_told_every_value(name):
    n_msts = 5 if name == "gp" else 8
    search = OptunaSearch(_make, CONTINUOUS, n_msts=n_msts, epochs=2, sampler=_sampler(name))
    trainer = FakeTrainer(search, n_workers=2, objective_fn=_bowl).run()
    trials = search.study.trials
    assert len(trainer.msts()) == len(trials) == n_msts
    assert all(t.state is TrialState.COMPLETE for t in trials)
    assert [t.value for t in trials] == list(_values(trainer, search).values())
    for mst, trial in zip(trainer.msts(), trials, strict=True):
        assert mst.params == trial.params


def test_tpe_keeps_every_worker_busy_and_improves_on_random():
    search = TPESearch(_make, SPACE, n_msts=24, epochs=2, n_startup_trials=6, seed=1)
    trainer = FakeTrainer(search, n_workers=3, objective_fn=_loss).run()
    assert trainer.calls[:3] == [("add", m, 2) for m in range(3)]  # on_start: n_workers
    last_add = max(e.start for e in trainer.log if e.epoch == 0)
    assert all(
        e.start == 0 or any(f.end == e.start and f.worker == e.worker for f in trainer.log)
        for e in trainer.log
        if e.start <= last_add
    )  # no worker idled before the last MST started
    values = list(_values(trainer, search).values())
    assert min(values[12:]) < min(values[:6])  # TPE beats its random start
    assert search.study.best_value == min(values)


def test_on_start_proposes_n_initial_when_more_than_workers():
    search = OptunaSearch(_make, SPACE, n_msts=10, epochs=1, n_initial=5)
    trainer = FakeTrainer(search, n_workers=2, objective_fn=_loss)
    trainer.run(n_epochs=0)
    assert len(trainer.msts()) == 5


def test_maximize_tells_the_metric_as_is():
    search = TPESearch(
        _make, SPACE, n_msts=6, epochs=1, metric="val_accuracy", direction="maximize"
    )
    trainer = FakeTrainer(search, 2, lambda p, e: {"val_accuracy": -_loss(p, e)}).run()
    assert search.study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert search.study.best_value == max(_values(trainer, search).values())


def test_failed_msts_are_told_fail_and_stopped_ones_their_last_value():
    class StopsMST1(OptunaSearch):
        def on_epoch_end(self, trainer, result: EpochResult) -> Decision:
            super().on_epoch_end(trainer, result)
            return Decision.STOP if result.mst_id == 1 else Decision.CONTINUE

    def loss(params, epoch):
        if params["x"] > 0.5:
            raise MSTFailedError("diverged")
        return params["x"] ** 2 + epoch

    sampler = optuna.samplers.RandomSampler(seed=3)
    search = StopsMST1(_make, {"x": uniform(-1, 1)}, n_msts=10, epochs=3, sampler=sampler)
    trainer = FakeTrainer(search, n_workers=2, objective_fn=loss).run()
    trials = search.study.trials
    states = {m.id: trainer.status(m.id) for m in trainer.msts()}
    assert "failed" in states.values() and states[1] == "stopped"
    for m, status in states.items():
        if status == "failed":
            assert trials[m].state is TrialState.FAIL and trials[m].value is None
        else:
            assert trials[m].state is TrialState.COMPLETE
            assert trials[m].value == trainer.results(m)[-1].metrics["val_loss"]
    assert len(trainer.results(1)) == 1


def test_tpe_is_deterministic_and_resumes_to_the_same_run():
    def run(seed, crash_at=None):
        trainer = FakeTrainer(TPESearch(_make, SPACE, n_msts=12, epochs=2, seed=seed), 3, _loss)
        if crash_at is not None:
            trainer.run(n_epochs=crash_at)
            trainer = trainer.resume(TPESearch(_make, SPACE, n_msts=12, epochs=2, seed=seed))
        return trainer.run()

    a, b, c = run(0), run(0, crash_at=13), run(1)
    assert a.calls == b.calls and a.msts() == b.msts() and a.log == b.log
    assert [m.params for m in a.msts()] != [m.params for m in c.msts()]
    study_a, study_b = a.procedure.study, b.procedure.study
    assert [(t.params, t.value, t.state) for t in study_a.trials] == [
        (t.params, t.value, t.state) for t in study_b.trials
    ]


def test_resume_rebuilds_the_study_from_the_trainer():
    search = TPESearch(_make, SPACE, n_msts=8, epochs=2)
    trainer = FakeTrainer(search, 2, _loss)
    trainer.run(n_epochs=5)
    n_msts = len(trainer.msts())
    fresh = TPESearch(_make, SPACE, n_msts=8, epochs=2)
    resumed = trainer.resume(fresh)
    fresh.on_start(resumed)
    assert len(resumed.msts()) == n_msts  # nothing asked again
    states = [t.state for t in fresh.study.trials]
    for m, state in zip(resumed.msts(), states, strict=True):
        finished = resumed.status(m.id) == "completed"
        assert state is (TrialState.COMPLETE if finished else TrialState.RUNNING)
    assert states.count(TrialState.RUNNING) == 2


def test_choices_of_lists_come_back_as_space_values():
    space = {"layers": choice([[16, 16], [32]]), "lr": loguniform(1e-3, 1e-1)}
    search = TPESearch(_make, space, n_msts=4, epochs=1)
    trainer = FakeTrainer(search, 2, lambda p, e: len(p["layers"]) * p["lr"]).run()
    assert {m.params["layers"] for m in trainer.msts()} <= {(16, 16), (32,)}
    assert {t.params["layers"] for t in search.study.trials} <= {0, 1}


def test_optuna_logging_is_quiet_and_left_as_it_was(capfd):
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        search = TPESearch(_make, SPACE, n_msts=3, epochs=1)
        FakeTrainer(search, 2, _loss).run()
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert "Trial" not in capfd.readouterr().err


def test_hooks_before_on_start_are_an_error():
    search = TPESearch(_make, SPACE, n_msts=3, epochs=1)
    with pytest.raises(ModelHopperError, match="TPESearch has no study yet: the experiment calls"):
        search.on_idle(FakeTrainer(search, 2, _loss), 2)


@pytest.mark.parametrize("sampler", [None, optuna.samplers.RandomSampler(seed=2)])
def test_a_procedure_survives_cloudpickle_as_the_run_directory_keeps_it(sampler):
    cloudpickle = pytest.importorskip("cloudpickle")
    search = OptunaSearch(_make, SPACE, n_msts=6, epochs=1, sampler=sampler)
    copy = cloudpickle.loads(cloudpickle.dumps(search))
    a = FakeTrainer(search, 2, _loss).run()
    b = FakeTrainer(copy, 2, _loss).run()
    assert a.msts() == b.msts()


def test_settings_name_the_sampler():
    settings = TPESearch(_make, SPACE, n_msts=3, epochs=1).settings()
    assert settings["sampler"] == "TPESampler" and settings["n_msts"] == 3
    assert settings["n_startup_trials"] == 10
