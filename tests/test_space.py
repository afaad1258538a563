"""Tests for modelhopper.space: domain checks, sampling, grid expansion, points, round trips."""

from __future__ import annotations

import json
import math
import re
import statistics

import numpy as np
import pytest

from modelhopper.errors import ModelHopperError, SpaceError
from modelhopper.space import (
    BaseDomain,
    Choice,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    Space,
    Uniform,
    choice,
    grid,
    loguniform,
    quniform,
    randint,
    uniform,
)


def _space() -> Space:
    return Space(
        {
            "lr": loguniform(1e-4, 1e-1),
            "hidden": choice([32, 64, 128]),
            "act": grid(["relu", "gelu"]),
            "n_layers": randint(1, 4),
            "dropout": quniform(0.0, 0.5, 0.1),
            "momentum": uniform(0.8, 0.99),
            "batch_size": 32,
            "sizes": (64, 32),
        }
    )


# ---------------------------------------------------------------- factory checks


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: choice([]),
            r"choice needs at least one value, got \[\]; give a list such as choice\(\[",
        ),
        (lambda: grid(()), r"grid needs at least one value, got \(\); give a list such as grid"),
        (lambda: choice("abc"), r"choice needs a list or tuple of values, got 'abc' \(str\)"),
        (lambda: choice(5), r"choice needs a list or tuple of values, got 5 \(int\)"),
        (lambda: choice([print]), "choice values must be plain .* use names such as 'relu'"),
        (lambda: uniform(2.0, 1.0), "low <= high must hold for uniform, got low=2.0, high=1.0"),
        (lambda: quniform(1, 0, 0.1), "low <= high must hold for quniform, got low=1.0, high=0.0"),
        (lambda: loguniform(0.1, 0.01), "low <= high must hold for loguniform, got low=0.1, high"),
        (lambda: loguniform(0, 1), "low > 0 must hold for loguniform, got low=0.0.*use uniform"),
        (lambda: loguniform(-1, 1), "low > 0 must hold for loguniform, got low=-1.0"),
        (lambda: randint(5, 5), "low < high must hold for randint .*high=5; use high=6"),
        (lambda: randint(5, 2), "low < high must hold for randint .*low=5, high=2; swap them"),
        (lambda: randint(1.5, 4), r"low must be an int for randint, got low=1.5 \(float\)"),
        (lambda: randint(1, 1e3), r"high must be an int .* got high=1000.0 .*pass high=1000"),
        (lambda: randint(True, 4), r"low must be an int for randint, got low=True \(bool\)"),
        (lambda: quniform(0, 1, 0), "q > 0 must hold for quniform, got q=0.0; pass the step"),
        (lambda: quniform(0, 1, -0.1), "q > 0 must hold for quniform, got q=-0.1"),
        (lambda: uniform("a", 1), r"low must be a finite number for uniform, got low='a' \(str"),
        (lambda: uniform(0, True), r"high must be a finite number .* got high=True \(bool\)"),
        (lambda: uniform(math.nan, 1), "low must be a finite number for uniform, got low=nan"),
        (lambda: loguniform(1e-3, math.inf), "high must be a finite number .* got high=inf"),
        (lambda: quniform(0, 1, math.nan), "q must be a finite number for quniform, got q=nan"),
    ],
)
def test_factory_rejects_invalid_arguments(make, match):
    with pytest.raises(SpaceError, match=match) as info:
        make()
    assert "('" not in str(info.value)  # standalone factories know no parameter name


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        (LogUniform(0.1, 0.01), "low <= high must hold for loguniform('lr'), got low=0.1, "),
        (Choice([]), "choice('lr') needs at least one value, got []; give a list such as choice("),
        (Grid(()), "grid('lr') needs at least one value"),
        (Uniform(1, 0), "low <= high must hold for uniform('lr')"),
        (LogUniform(0, 1), "low > 0 must hold for loguniform('lr')"),
        (RandInt(3, 3), "low < high must hold for randint('lr')"),
        (QUniform(0, 1, 0), "q > 0 must hold for quniform('lr')"),
        (Uniform("a", 1), "low must be a finite number for uniform('lr')"),
    ],
)
def test_space_names_the_parameter_of_an_invalid_domain(domain, message):
    with pytest.raises(SpaceError, match=re.escape(message)):
        Space({"lr": domain})


def test_space_error_is_a_value_error_and_a_modelhopper_error():
    with pytest.raises(ValueError):
        uniform(1, 0)
    assert issubclass(SpaceError, ModelHopperError)


def test_factories_normalise_their_arguments():
    assert choice([np.int64(3), [1, 2]]) == Choice((3, (1, 2)))
    assert grid(range(3)) == Grid((0, 1, 2))
    assert choice(np.array([1.5])) == Choice((1.5,))
    assert uniform(0, 1) == Uniform(0.0, 1.0)
    assert randint(np.int64(1), 3) == RandInt(1, 3)
    assert all(isinstance(d, BaseDomain) for d in (choice([1]), grid([1]), quniform(0, 1, 1)))


# ---------------------------------------------------------------- space construction


class FloatDistribution:  # shaped like Optuna's, which a Space must not take for a constant
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({"grid_search": [1, 2]}, "dict"),
        (FloatDistribution(0.0, 1.0), "FloatDistribution"),
        (lambda spec: 0.1, "function"),
        (uniform, "function"),
        (np.float64, "type"),
        ((1, object()), "tuple"),
        ({1: "a"}, "dict"),
    ],
)
def test_unknown_domain_type_is_rejected(value, type_name):
    match = (
        f"unknown domain type {type_name} for 'x'.*; use one of choice, grid, uniform, "
        "loguniform, randint, quniform, or a plain constant"
    )
    with pytest.raises(SpaceError, match=match):
        Space({"x": value})


@pytest.mark.parametrize("name", ["", "  ", 3, None])
def test_names_must_be_non_empty_strings(name):
    with pytest.raises(SpaceError, match="parameter names must be non-empty strings, got"):
        Space({name: 1})


def test_space_rejects_a_non_mapping():
    with pytest.raises(SpaceError, match=r"built from a mapping .* got \[1\] \(list\)"):
        Space([1])  # type: ignore[arg-type]


def test_space_accessors():
    space = _space()
    assert space.names == (
        "lr",
        "hidden",
        "act",
        "n_layers",
        "dropout",
        "momentum",
        "batch_size",
        "sizes",
    )
    assert len(space) == 8 and "lr" in space and "nope" not in space
    assert space.domains["hidden"] == Choice((32, 64, 128))
    assert space.domains["batch_size"] == 32
    with pytest.raises(TypeError):
        space.domains["lr"] = 1  # type: ignore[index]
    assert "LogUniform(low=0.0001, high=0.1)" in repr(space)
    assert Space(space) == space and Space.from_any(space) is space
    assert Space.from_any({"a": 1}) == Space({"a": 1})


# ---------------------------------------------------------------- sampling


def test_sample_is_deterministic_for_a_seed():
    space = _space()
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    points = [space.sample(rng_a) for _ in range(5)]
    assert points == [space.sample(rng_b) for _ in range(5)]
    assert len({json.dumps(p) for p in points}) == 5  # successive draws differ
    rng_c = np.random.default_rng(8)
    assert [space.sample(rng_c) for _ in range(5)] != points


def test_sample_gives_plain_python_types_and_constants():
    rng = np.random.default_rng(0)
    for _ in range(20):
        point = _space().sample(rng)
        assert list(point) == list(_space().names)
        assert type(point["lr"]) is float and type(point["momentum"]) is float
        assert type(point["dropout"]) is float
        assert type(point["n_layers"]) is int and type(point["hidden"]) is int
        assert type(point["act"]) is str
        assert point["batch_size"] == 32 and point["sizes"] == (64, 32)
    json.dumps(point)  # points go into the Store as JSON


def test_sample_copies_mutable_constants():
    space = Space({"opt": {"name": "adam"}})
    point = space.sample(np.random.default_rng(0))
    point["opt"]["name"] = "sgd"
    assert space.sample(np.random.default_rng(0)) == {"opt": {"name": "adam"}}


def test_sample_requires_a_generator():
    with pytest.raises(SpaceError, match="rng must be a numpy.random.Generator, got int"):
        _space().sample(0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("domain", "low", "high"),
    [(uniform(-2, 3), -2, 3), (loguniform(1e-5, 1e-1), 1e-5, 1e-1), (uniform(1, 1), 1, 1)],
)
def test_continuous_samples_stay_within_bounds(domain, low, high):
    rng = np.random.default_rng(1)
    space = Space({"x": domain})
    values = [space.sample(rng)["x"] for _ in range(2000)]
    assert all(low <= v <= high for v in values)


def test_loguniform_is_spread_on_a_log_scale():
    rng = np.random.default_rng(2)
    space = Space({"lr": loguniform(1e-4, 1.0)})
    values = [space.sample(rng)["lr"] for _ in range(2000)]
    # median of a log-uniform is the geometric mean, 1e-2; a uniform's would be near 0.5
    assert 10**-2.15 < statistics.median(values) < 10**-1.85
    per_decade = np.histogram(np.log10(values), bins=4, range=(-4, 0))[0]
    assert per_decade.min() > 400


def test_randint_high_is_exclusive():
    rng = np.random.default_rng(3)
    space = Space({"n": randint(1, 4)})
    assert {space.sample(rng)["n"] for _ in range(300)} == {1, 2, 3}


def test_choice_and_grid_sample_every_value():
    rng = np.random.default_rng(4)
    space = Space({"c": choice(["a", "b", "c"]), "g": grid([1, 2])})
    points = [space.sample(rng) for _ in range(200)]
    assert {p["c"] for p in points} == {"a", "b", "c"} and {p["g"] for p in points} == {1, 2}


@pytest.mark.parametrize(
    ("low", "high", "q"), [(0.0, 1.0, 0.1), (0, 100, 5), (-1.0, 1.0, 0.25), (0.0, 0.3, 0.1)]
)
def test_quniform_gives_multiples_of_q_within_bounds(low, high, q):
    rng = np.random.default_rng(5)
    space = Space({"x": quniform(low, high, q)})
    values = {space.sample(rng)["x"] for _ in range(500)}
    assert all(low <= v <= high for v in values)
    assert all(v == round(round(v / q) * q, 10) for v in values)  # exact, no 0.30000000000000004
    assert len(values) == round((high - low) / q) + 1


def test_quniform_clips_into_bounds():
    rng = np.random.default_rng(6)
    values = {Space({"x": quniform(0.0, 0.07, 0.1)}).sample(rng)["x"] for _ in range(100)}
    assert values == {0.0, 0.07}


# ---------------------------------------------------------------- grid points


def test_grid_points_is_the_product_in_insertion_order():
    space = Space({"a": grid([1, 2]), "const": "x", "b": choice(["u", "v", "w"])})
    points = space.grid_points()
    assert len(points) == 6
    assert points[:4] == [
        {"a": 1, "const": "x", "b": "u"},
        {"a": 1, "const": "x", "b": "v"},
        {"a": 1, "const": "x", "b": "w"},
        {"a": 2, "const": "x", "b": "u"},
    ]
    assert all(list(p) == ["a", "const", "b"] for p in points)


def test_grid_points_of_constants_only_is_one_point():
    assert Space({"bs": 32}).grid_points() == [{"bs": 32}]


@pytest.mark.parametrize(
    ("domain", "label"),
    [
        (uniform(0, 1), "uniform('lr')"),
        (loguniform(1e-4, 1e-1), "loguniform('lr')"),
        (randint(1, 5), "randint('lr')"),
        (quniform(0, 1, 0.5), "quniform('lr')"),
    ],
)
def test_grid_points_rejects_ranges(domain, label):
    match = (
        re.escape(f"GridSearch cannot expand {label}")
        + r".*"
        + re.escape("use grid([...]) / choice([...]) for 'lr', or RandomSearch")
    )
    with pytest.raises(SpaceError, match=match):
        Space({"h": grid([1, 2]), "lr": domain}).grid_points()


def test_grid_points_guards_against_explosion():
    space = Space({"a": grid(range(100)), "b": choice(range(50))})
    with pytest.raises(SpaceError, match=r"the grid has 5,000 points .* n_grid_max=1,000; shorten"):
        space.grid_points(n_grid_max=1000)
    assert len(space.grid_points(n_grid_max=5000)) == 5000
    with pytest.raises(SpaceError, match=r"n_grid_max must be an int >= 1, got 0 \(int\)"):
        space.grid_points(n_grid_max=0)


# ---------------------------------------------------------------- validate_point


def test_validate_point_accepts_and_completes():
    params = {
        "lr": np.float64(0.01),
        "hidden": 64,
        "act": "gelu",
        "n_layers": 3,
        "dropout": 0.3,
        "momentum": 0.9,
    }
    point = _space().validate_point(params)
    assert point == {**params, "batch_size": 32, "sizes": (64, 32)}
    assert type(point["lr"]) is float and list(point) == list(_space().names)


@pytest.mark.parametrize(
    ("domain", "value", "expected"),
    [
        (choice([[1, 2], [3]]), (1, 2), (1, 2)),
        (choice([[1, 2], [3]]), [3], (3,)),
        (uniform(0, 1), 1, 1.0),
        (quniform(0.05, 0.5, 0.1), 0.05, 0.05),  # a clipped bound is admissible
        (randint(0, 3), np.int64(2), 2),
    ],
)
def test_validate_point_normalises_admissible_values(domain, value, expected):
    point = Space({"x": domain}).validate_point({"x": value})
    assert point["x"] == expected and type(point["x"]) is type(expected)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"bogus": 1}, "params has unknown name 'bogus'; the space knows 'lr', 'hidden'"),
        ({"hidden": 48}, r"params\['hidden'\]=48 is not one of the values of choice\('hidden'\): "),
        ({"hidden": True}, r"params\['hidden'\]=True is not one of .*\[32, 64, 128\]"),
        ({"act": "tanh"}, r"grid\('act'\): \['relu', 'gelu'\]; pick one of them"),
        ({"lr": 0.5}, r"params\['lr'\]=0.5 is outside \[0.0001, 0.1\] of loguniform\('lr'\)"),
        ({"lr": math.nan}, r"params\['lr'\]=nan is outside"),
        ({"lr": "0.01"}, r"params\['lr'\] must be a number for loguniform\('lr'\), got '0.01'"),
        ({"n_layers": 4}, r"params\['n_layers'\]=4 is outside \[1, 4\) .*high is exclusive"),
        ({"n_layers": 2.0}, r"params\['n_layers'\] must be an int for randint"),
        ({"dropout": 0.33}, r"params\['dropout'\]=0.33 is not a multiple of q=0.1 .* to 0.3"),
        ({"batch_size": 64}, r"params\['batch_size'\]=64 differs from the constant 32"),
    ],
)
def test_validate_point_rejects(params, match):
    valid = {"lr": 0.01, "hidden": 64, "act": "relu", "n_layers": 2, "dropout": 0.2}
    with pytest.raises(SpaceError, match=match):
        _space().validate_point({**valid, "momentum": 0.9, **params})


def test_validate_point_names_every_missing_parameter():
    match = "params is missing 'lr', 'act', 'n_layers', 'dropout', 'momentum', which the space"
    with pytest.raises(SpaceError, match=match):
        _space().validate_point({"hidden": 64})


def test_validate_point_accepts_the_constant_value():
    assert Space({"bs": 32, "n": randint(0, 2)}).validate_point({"bs": 32, "n": 0}) == {
        "bs": 32,
        "n": 0,
    }


def test_validate_point_requires_a_mapping():
    with pytest.raises(SpaceError, match=r"params must be a mapping .* got \[1\] \(list\)"):
        _space().validate_point([1])  # type: ignore[arg-type]


# ---------------------------------------------------------------- to_dict / from_dict


def test_to_dict_describes_each_domain():
    d = _space().to_dict()
    assert d["lr"] == {"type": "loguniform", "low": 1e-4, "high": 0.1}
    assert d["hidden"] == {"type": "choice", "values": [32, 64, 128]}
    assert d["act"] == {"type": "grid", "values": ["relu", "gelu"]}
    assert d["n_layers"] == {"type": "randint", "low": 1, "high": 4}
    assert d["dropout"] == {"type": "quniform", "low": 0.0, "high": 0.5, "q": 0.1}
    assert d["batch_size"] == {"type": "constant", "value": 32}
    assert d["sizes"] == {"type": "constant", "value": [64, 32]}


def test_to_dict_from_dict_round_trips_through_json():
    space = Space({**_space().domains, "opt": {"name": "adam", "betas": (0.9, 0.99)}})
    again = Space.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space and again.names == space.names
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    assert again.sample(rng_a) == space.sample(rng_b)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"x": {"type": "normal"}}, "entry 'x' of a space dict needs a 'type' among 'choice'"),
        ({"x": 3}, "entry 'x' of a space dict needs a 'type'"),
        ({"x": {"type": "uniform", "low": 0}}, r"needs keys \['type', 'low', 'high'\]"),
        ({"x": {"type": "constant"}}, r"entry 'x' of type 'constant' needs keys"),
        ({"x": {"type": "uniform", "low": 1, "high": 0}}, r"must hold for uniform\('x'\)"),
    ],
)
def test_from_dict_rejects_malformed_entries(data, match):
    with pytest.raises(SpaceError, match=match):
        Space.from_dict(data)
