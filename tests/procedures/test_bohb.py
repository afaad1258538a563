"""BOHB-style proposals in ASHA and Hyperband: TPE on the highest rung with enough reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("optuna")

from modelhopper.errors import ConfigError  # noqa: E402
from modelhopper.procedures._hyperband import ASHA, Hyperband, SuccessiveHalving  # noqa: E402
from modelhopper.space import choice, loguniform  # noqa: E402
from modelhopper.testing import FakeTrainer  # noqa: E402

SPACE = {"lr": loguniform(1e-5, 1.0), "width": choice([16, 32, 64, 128])}


def _loss(params, epoch):
    """Best at lr = 1e-2 and width 64; a little better with every epoch."""
    return (math.log10(params["lr"]) + 2) ** 2 + 0.3 * (params["width"] != 64) + 1 / (epoch + 1)


def _run(sampler, procedure=ASHA, seed=0, **kwargs):
    search = procedure(lambda p: None, SPACE, max_epochs=9, reduction_factor=3, n_msts=60,
                       seed=seed, sampler=sampler, **kwargs)  # fmt: skip
    return FakeTrainer(search, n_workers=4, objective_fn=_loss).run()


def _first_rung_losses(trainer, start):
    return [_loss(m.params, 0) for m in trainer.msts()[start:]]


@pytest.mark.parametrize("procedure", [ASHA, Hyperband])
def test_tpe_proposals_beat_random_ones_once_a_rung_has_enough_reports(procedure):
    tpe, random = _run("tpe", procedure), _run("random", procedure)
    assert len(tpe.msts()) == len(random.msts()) == 60
    # the first MSTs are random in both (no rung has d + 1 = 3 reports yet)
    assert [m.params for m in tpe.msts()[:4]] == [m.params for m in random.msts()[:4]]
    later_tpe = np.mean(_first_rung_losses(tpe, 30))
    later_random = np.mean(_first_rung_losses(random, 30))
    assert later_tpe < 0.6 * later_random, (later_tpe, later_random)
    assert tpe.best()[1] >= random.best()[1]  # best() is higher-is-better


def test_tpe_proposals_are_a_function_of_the_seed_and_the_reports():
    first, second = _run("tpe"), _run("tpe")
    assert [m.params for m in first.msts()] == [m.params for m in second.msts()]
    other = _run("tpe", seed=1)
    assert [m.params for m in other.msts()] != [m.params for m in first.msts()]
    # about a third are the random points (BOHB's random fraction), the rest TPE's
    randoms = _run("random")
    same = sum(a.params == b.params for a, b in zip(first.msts(), randoms.msts(), strict=True))
    assert 10 <= same <= 35


def test_a_resumed_run_proposes_what_the_uninterrupted_one_did():
    whole = _run("tpe")
    search = ASHA(lambda p: None, SPACE, max_epochs=9, reduction_factor=3, n_msts=60,
                  seed=0, sampler="tpe")  # fmt: skip
    cut = FakeTrainer(search, n_workers=4, objective_fn=_loss).run(n_epochs=40)
    again = ASHA(lambda p: None, SPACE, max_epochs=9, reduction_factor=3, n_msts=60,
                 seed=0, sampler="tpe")  # fmt: skip
    resumed = cut.resume(again).run()  # a copy of the trainer, driven by the new procedure
    assert [m.params for m in resumed.msts()] == [m.params for m in whole.msts()]


def test_bad_samplers_are_refused():
    with pytest.raises(ConfigError, match="sampler must be 'random'.*or 'tpe'.*got 'bo'"):
        _run("bo")
    with pytest.raises(ConfigError, match="SuccessiveHalving proposes all its MSTs"):
        _run("tpe", SuccessiveHalving)
    assert ASHA(lambda p: None, SPACE, max_epochs=9, n_msts=4,
                sampler="tpe").settings()["sampler"] == "tpe"  # fmt: skip
