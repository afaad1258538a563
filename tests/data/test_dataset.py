from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from modelhopper.data import Dataset, Split
from modelhopper.errors import DataError


def _arrays(n: int = 10, n_features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_features)), rng.integers(0, 4, size=n)


def _frame(n: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"a": rng.normal(size=n), "b": rng.integers(0, 5, size=n), "y": np.arange(n) % 3}
    )


# ----------------------------------------------------------------------------- Split


@pytest.mark.parametrize(
    ("x_dtype", "y_dtype", "x_expected", "y_expected"),
    [
        (np.float64, np.int32, np.float32, np.int64),
        (np.float16, np.uint8, np.float32, np.int64),
        (np.float32, np.bool_, np.float32, np.int64),
        (np.int64, np.float64, np.int64, np.float32),
        (np.uint8, np.int64, np.uint8, np.int64),
        (np.bool_, np.float16, np.bool_, np.float32),
    ],
)
def test_split_converts_dtypes(x_dtype, y_dtype, x_expected, y_expected) -> None:
    split = Split(np.ones((4, 2), dtype=x_dtype), np.zeros(4, dtype=y_dtype))
    assert split.x.dtype == x_expected
    assert split.y.dtype == y_expected


def test_split_makes_arrays_c_contiguous() -> None:
    x = np.asfortranarray(np.ones((5, 3), dtype=np.float32))
    split = Split(x[:, ::-1], np.arange(5))
    assert split.x.flags.c_contiguous and split.y.flags.c_contiguous


def test_split_len_nbytes_and_lists() -> None:
    split = Split([[1.0, 2.0], [3.0, 4.0]], [0, 1], name="train")
    assert len(split) == 2
    assert split.nbytes == 2 * 2 * 4 + 2 * 8
    assert split.name == "train"
    assert "train" in repr(split)


def test_split_accepts_2d_float_targets() -> None:
    split = Split(np.ones((3, 2)), np.ones((3, 4)))
    assert split.y.shape == (3, 4) and split.y.dtype == np.float32


@pytest.mark.parametrize(
    ("x", "y", "name", "match"),
    [
        (
            np.ones((1000, 2)),
            np.ones(999),
            "train",
            r"x has 1000 rows but y has 999 in the 'train' split; features and labels must "
            r"have one row per example",
        ),
        (
            np.ones((0, 2)),
            np.ones(0),
            "validation",
            r"the 'validation' split is empty; give it at least one example",
        ),
        (
            np.array([["a", 1]], dtype=object),
            np.ones(1),
            "train",
            r"x of the 'train' split has dtype object; features must be numeric — encode "
            r"categorical columns \(e\.g\. pandas\.get_dummies\)",
        ),
        (np.array([["a"], ["b"]]), np.ones(2), "train", r"x of the 'train' split has dtype <U1"),
        (np.ones((2, 2), dtype=complex), np.ones(2), "train", r"features must be numeric"),
        (
            np.array([[1.0, np.nan], [np.inf, 2.0]]),
            np.ones(2),
            "test",
            r"x of the 'test' split has 2 non-finite values \(NaN or inf\); impute them .* or "
            r"drop",
        ),
        (np.ones((2, 2)), np.array(["a", "b"]), "train", r"labels must be numeric"),
        (np.ones((2, 2)), np.ones((2, 1, 1)), "train", r"labels must be 1-D .* or 2-D"),
        (np.ones((2, 2)), np.array([1.0, np.nan]), "train", r"y of the 'train' split has 1 non"),
        (np.float64(3.0), np.ones(1), "train", r"x of the 'train' split is a scalar"),
    ],
)
def test_split_rejects_invalid_arrays(x, y, name, match) -> None:
    with pytest.raises(DataError, match=match):
        Split(x, y, name=name)


# ------------------------------------------------------------------------ from_numpy


def test_from_numpy_builds_all_splits() -> None:
    x, y = _arrays(12)
    dataset = Dataset.from_numpy(x[:8], y[:8], x[8:10], y[8:10], x[10:], y[10:])
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [8, 2, 2]
    assert [dataset.train.name, dataset.validation.name, dataset.test.name] == [
        "train",
        "validation",
        "test",
    ]
    assert dataset.n_features_shape == (3,)
    assert dataset.nbytes == 12 * 3 * 4 + 12 * 8
    np.testing.assert_array_equal(dataset.train.x, x[:8].astype(np.float32))


def test_from_numpy_without_test_split() -> None:
    x, y = _arrays(6)
    dataset = Dataset.from_numpy(x[:4], y[:4], x[4:], y[4:])
    assert dataset.test is None
    assert dataset.nbytes == dataset.train.nbytes + dataset.validation.nbytes
    assert "train=4, validation=2" in repr(dataset)


@pytest.mark.parametrize(
    ("x_val", "y_val", "match"),
    [
        (np.ones((3, 2)), np.zeros(2), r"x has 3 rows but y has 2 in the 'validation' split"),
        (np.ones((0, 3)), np.zeros(0), r"the 'validation' split is empty"),
        (np.ones((2, 4)), np.zeros(2), r"'validation' split has feature shape \(4,\) but"),
        (np.ones((2, 3)), np.zeros(2, dtype=np.float32), r"has dtype float32 but the 'train'"),
    ],
)
def test_from_numpy_rejects_bad_validation_split(x_val, y_val, match) -> None:
    x, y = _arrays(4)
    with pytest.raises(DataError, match=match):
        Dataset.from_numpy(x, y, x_val, y_val)


def test_from_numpy_needs_both_test_arrays() -> None:
    x, y = _arrays(4)
    with pytest.raises(DataError, match=r"x_test was given but y_test is None"):
        Dataset.from_numpy(x, y, x, y, x_test=x)


def test_dataset_rejects_non_split() -> None:
    x, y = _arrays(4)
    with pytest.raises(DataError, match=r"Dataset\(validation=...\) must be a Split"):
        Dataset(Split(x, y), (x, y))  # type: ignore[arg-type]


# ----------------------------------------------------------------- labels / classes


def test_num_classes_over_all_splits() -> None:
    x = np.ones((3, 2))
    dataset = Dataset.from_numpy(x, [0, 1, 2], x, [0, 0, 1], x, [7, 0, 0])
    assert dataset.num_classes == 8


def test_num_classes_is_none_for_float_targets() -> None:
    x = np.ones((3, 2))
    dataset = Dataset.from_numpy(x, [0.5, 1.0, 2.0], x, [0.0, 0.0, 1.0])
    assert dataset.num_classes is None
    dataset.check_labels(2)  # float targets have no class labels to check


@pytest.mark.parametrize(
    ("y_train", "y_val", "num_classes", "match"),
    [
        (
            [0, 12, 3],
            [0, 1, 2],
            10,
            r"label 12 in the 'train' split is outside \[0, 10\) for a 10-class loss; check "
            r"the model's output size \(num_classes\) or the labels",
        ),
        ([0, 1, 2], [0, -1, 1], 10, r"label -1 in the 'validation' split is outside \[0, 10\)"),
        ([0, 1, 2], [0, 1, 3], 3, r"label 3 in the 'validation' split is outside \[0, 3\)"),
        ([0, 1, 2], [0, 1, 2], 0, r"num_classes must be >= 1, got 0"),
        ([0, 1, 2], [0, 1, 2], 2.0, r"num_classes must be an int, got 2.0"),
    ],
)
def test_check_labels_rejects_out_of_range(y_train, y_val, num_classes, match) -> None:
    x = np.ones((3, 2))
    dataset = Dataset.from_numpy(x, y_train, x, y_val)
    with pytest.raises(DataError, match=match):
        dataset.check_labels(num_classes)


def test_check_labels_accepts_labels_in_range() -> None:
    x = np.ones((3, 2))
    dataset = Dataset.from_numpy(x, [0, 9, 3], x, [0, 1, 2], x, [9, 9, 0])
    dataset.check_labels(10)
    dataset.check_labels(np.int64(12))


# ----------------------------------------------------------------------- from_pandas


def test_from_pandas_uses_all_columns_but_the_label() -> None:
    train, val, test = _frame(8, 0), _frame(4, 1), _frame(3, 2)
    dataset = Dataset.from_pandas(train, val, test, label="y")
    assert dataset.n_features_shape == (2,)
    assert dataset.train.x.dtype == np.float32
    assert dataset.train.y.dtype == np.int64
    np.testing.assert_array_equal(dataset.test.y, test["y"].to_numpy())
    np.testing.assert_allclose(dataset.train.x[:, 0], train["a"].to_numpy(), rtol=1e-6)


def test_from_pandas_selects_features_in_order() -> None:
    dataset = Dataset.from_pandas(_frame(8), _frame(4), label="y", features=["b", "a"])
    assert dataset.test is None
    np.testing.assert_array_equal(dataset.train.x[:, 0], _frame(8)["b"].to_numpy())


def test_from_pandas_float_label_gives_float_targets() -> None:
    train = _frame(6).assign(y=np.linspace(0, 1, 6))
    dataset = Dataset.from_pandas(train, train, label="y")
    assert dataset.train.y.dtype == np.float32
    assert dataset.num_classes is None


@pytest.mark.parametrize(
    ("train", "kwargs", "match"),
    [
        (
            _frame(),
            {"label": "target"},
            r"label column 'target' not found in the 'train' split; its columns are "
            r"\['a', 'b', 'y'\]",
        ),
        (_frame(), {"label": "y", "features": ["a", "c"]}, r"feature columns \['c'\] not found"),
        (_frame(), {"label": "y", "features": ["a", "y"]}, r"'y' is also listed in features"),
        (_frame(), {"label": "y", "features": "a"}, r"write features=\['a'\]"),
        (
            _frame().assign(color=["red", "blue"] * 4),
            {"label": "y"},
            r"column 'color' of the 'train' split has dtype .*; features must be numeric — "
            r"encode categorical columns \(e\.g\. pandas\.get_dummies\)",
        ),
        (
            _frame().assign(y=["cat", "dog"] * 4),
            {"label": "y"},
            r"label column 'y' of the 'train' split has dtype .*pandas\.factorize",
        ),
        (
            _frame().assign(a=[1.0, np.nan] * 4),
            {"label": "y"},
            r"x of the 'train' split has 4 non-finite values",
        ),
        (
            _frame().assign(b=pd.array([1, None] * 4, dtype="Int64")),
            {"label": "y"},
            r"x of the 'train' split has 4 non-finite values",
        ),
        (_frame()[["y"]], {"label": "y"}, r"no feature columns besides the label 'y'"),
        (_frame().to_numpy(), {"label": "y"}, r"'train' split must be a pandas.DataFrame"),
    ],
)
def test_from_pandas_rejects_invalid_frames(train, kwargs, match) -> None:
    with pytest.raises(DataError, match=match):
        Dataset.from_pandas(train, _frame(4), **kwargs)


# ---------------------------------------------------------------------- from_parquet


def _write_parquet(path, frame: pd.DataFrame) -> str:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def test_from_parquet_reads_every_split(tmp_path) -> None:
    frames = [_frame(8, 0), _frame(4, 1), _frame(3, 2)]
    paths = [_write_parquet(tmp_path / f"{i}.parquet", f) for i, f in enumerate(frames)]
    dataset = Dataset.from_parquet(*paths, label="y")
    expected = Dataset.from_pandas(*frames, label="y")
    for got, want in zip(
        (dataset.train.to_split(), dataset.validation.to_split(), dataset.test.to_split()),
        (expected.train, expected.validation, expected.test),
        strict=True,
    ):
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)


def test_from_parquet_reads_selected_features(tmp_path) -> None:
    path = _write_parquet(tmp_path / "t.parquet", _frame(8).assign(extra=["s"] * 8))
    dataset = Dataset.from_parquet(path, path, label="y", features=["a"])
    assert dataset.n_features_shape == (1,)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("missing", r"parquet file for the 'validation' split not found: '.*nope\.parquet'"),
        ("corrupt", r"could not read the parquet file for the 'validation' split at '.*bad"),
        ("no_label", r"label column 'label' not found in the 'validation' split"),
    ],
)
def test_from_parquet_rejects_bad_files(tmp_path, kind, match) -> None:
    good = _write_parquet(tmp_path / "good.parquet", _frame().rename(columns={"y": "label"}))
    if kind == "missing":
        bad = tmp_path / "nope.parquet"
    elif kind == "corrupt":
        bad = tmp_path / "bad.parquet"
        bad.write_bytes(b"not a parquet file")
    else:
        bad = _write_parquet(tmp_path / "nolabel.parquet", _frame())
    with pytest.raises(DataError, match=match):
        Dataset.from_parquet(good, bad, label="label")


# ------------------------------------------------------------------------ from_torch


class _PairDataset(torch.utils.data.Dataset):
    """A map-style dataset of (tensor, int) pairs, as user datasets usually are."""

    def __init__(self, n: int, shape: tuple[int, ...] = (2, 3)) -> None:
        self.n, self.shape = n, shape

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full(self.shape, float(i), dtype=torch.float64), i % 3


def test_from_torch_tensor_dataset() -> None:
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    ds = torch.utils.data.TensorDataset(x, y)
    dataset = Dataset.from_torch(ds, ds, ds)
    np.testing.assert_array_equal(dataset.train.x, x.numpy())
    np.testing.assert_array_equal(dataset.test.y, y.numpy())
    assert dataset.train.y.dtype == np.int64


def test_from_torch_stacks_pairs() -> None:
    dataset = Dataset.from_torch(_PairDataset(5), _PairDataset(2))
    train = dataset.train.to_split()  # map-style datasets are read while sharding
    assert train.x.shape == (5, 2, 3) and train.x.dtype == np.float32
    np.testing.assert_array_equal(train.y, [0, 1, 2, 0, 1])
    assert dataset.test is None and dataset.num_classes is None  # labels unknown until read


def test_from_torch_rejects_bad_items() -> None:
    singles = torch.utils.data.TensorDataset(torch.ones(3, 2))
    with pytest.raises(DataError, match=r"item 0 of the 'train' torch dataset is a tuple"):
        Dataset.from_torch(singles, _PairDataset(2))
    with pytest.raises(DataError, match=r"the 'validation' split is empty"):
        Dataset.from_torch(_PairDataset(2), _PairDataset(0))


def test_from_torch_rejects_ragged_items() -> None:
    class Ragged(_PairDataset):
        def __getitem__(self, i: int):
            return torch.ones(i + 1), 0

    with pytest.raises(DataError, match=r"item 0 is \(1,\), item 1 is \(2,\)\); pad or crop"):
        Dataset.from_torch(Ragged(3), _PairDataset(2))


# ----------------------------------------------------------------------- from_arrays


@pytest.mark.parametrize(
    ("n", "fractions", "sizes"),
    [
        (10, (0.6, 0.2, 0.2), (6, 2, 2)),
        (1797, (0.6, 0.2, 0.2), (1079, 359, 359)),
        (100, (0.8, 0.2, 0.0), (80, 20, 0)),
        (3, (0.98, 0.01, 0.01), (1, 1, 1)),
        (7, [0.5, 0.25, 0.25], (3, 2, 2)),
    ],
)
def test_from_arrays_split_sizes(n, fractions, sizes) -> None:
    x, y = _arrays(n)
    dataset = Dataset.from_arrays(x, y, fractions=fractions)
    n_test = 0 if dataset.test is None else len(dataset.test)
    assert (len(dataset.train), len(dataset.validation), n_test) == sizes


def test_from_arrays_is_a_permutation_of_the_input() -> None:
    x = np.arange(50, dtype=np.float64).reshape(50, 1)
    dataset = Dataset.from_arrays(x, np.arange(50), seed=3)
    rows = np.concatenate([dataset.train.x[:, 0], dataset.validation.x[:, 0], dataset.test.x[:, 0]])
    assert sorted(rows.tolist()) == list(range(50))
    labels = np.concatenate([dataset.train.y, dataset.validation.y, dataset.test.y])
    np.testing.assert_array_equal(rows, labels)  # rows keep their labels
    assert rows.tolist() != list(range(50))  # and are shuffled


def test_from_arrays_same_seed_same_split_different_seed_different() -> None:
    x, y = _arrays(40)
    first = Dataset.from_arrays(x, y, seed=7)
    again = Dataset.from_arrays(x, y, seed=7)
    other = Dataset.from_arrays(x, y, seed=8)
    np.testing.assert_array_equal(first.train.x, again.train.x)
    np.testing.assert_array_equal(first.test.y, again.test.y)
    assert not np.array_equal(first.train.x, other.train.x)


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ((0.6, 0.4), r"fractions must be three numbers \(train, validation, test\), got"),
        (0.5, r"fractions must be three numbers"),
        ((0.6, "0.2", 0.2), r"fractions must be three numbers"),
        ((0.6, 0.3, 0.2), r"fractions must sum to 1, got \(0\.6, 0\.3, 0\.2\) \(sum 1\.1\)"),
        ((1.0, 0.0, 0.0), r"fractions must be > 0 for train and validation and >= 0 for test"),
        ((0.0, 0.5, 0.5), r"fractions must be > 0 for train"),
        ((0.8, 0.4, -0.2), r">= 0 for test, got \(0\.8, 0\.4, -0\.2\)"),
        ((0.6, 0.2, float("nan")), r">= 0 for test"),
    ],
)
def test_from_arrays_rejects_bad_fractions(fractions, match) -> None:
    x, y = _arrays(10)
    with pytest.raises(DataError, match=match):
        Dataset.from_arrays(x, y, fractions=fractions)


@pytest.mark.parametrize(
    ("n", "kwargs", "match"),
    [
        (2, {}, r"x has 2 examples, too few to split .* need at least 3"),
        (10, {"seed": -1}, r"seed must be a non-negative int, got -1"),
        (10, {"seed": 1.5}, r"seed must be a non-negative int, got 1\.5"),
    ],
)
def test_from_arrays_rejects_bad_arguments(n, kwargs, match) -> None:
    x, y = _arrays(n)
    with pytest.raises(DataError, match=match):
        Dataset.from_arrays(x, y, **kwargs)


def test_from_arrays_rejects_length_mismatch() -> None:
    with pytest.raises(DataError, match=r"x has 10 rows but y has 9 in the 'data' split"):
        Dataset.from_arrays(np.ones((10, 2)), np.ones(9))


def test_shards_are_written_in_chunks_as_np_save_would_and_fingerprinted_in_the_same_pass(
    tmp_path, monkeypatch
):
    import hashlib

    from modelhopper.data import _sharding
    from modelhopper.provenance import data_fingerprint

    monkeypatch.setattr(_sharding, "_CHUNK_BYTES", 100)  # many chunks, a partial last one
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(103, 3, 2)).astype(np.float32), rng.integers(0, 4, 103)
    data = Dataset.from_numpy(x[:83], y[:83], x[83:], y[83:])
    digest = hashlib.sha256()
    infos = _sharding.write_shards(data, 2, tmp_path, seed=5, digest=digest)
    for info, (train, val) in zip(infos, _sharding.shard_splits(data, 2, seed=5), strict=True):
        shard = _sharding.open_shard(info.path)
        np.testing.assert_array_equal(shard.train_x, train.x)
        np.testing.assert_array_equal(shard.train_y, train.y)
        np.testing.assert_array_equal(shard.val_x, val.x)
        np.testing.assert_array_equal(shard.val_y, val.y)
        assert info.nbytes == shard.nbytes
    assert digest.hexdigest() == data_fingerprint([i.path for i in infos])
