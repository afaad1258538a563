from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from modelhopper.data import _datasets, datasets
from modelhopper.errors import DataError

_FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_ranges() -> None:
    dataset = datasets.digits()
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (1079, 359, 359)
    assert dataset.n_features_shape == (64,)
    assert dataset.train.x.dtype == np.float32 and dataset.train.y.dtype == np.int64
    for split in (dataset.train, dataset.validation, dataset.test):
        assert split.x.min() >= 0.0 and split.x.max() <= 1.0
    assert dataset.train.x.max() == 1.0
    assert dataset.num_classes == 10


def test_digits_splits_are_disjoint_and_cover_every_example() -> None:
    from sklearn.datasets import load_digits

    x_all, y_all = load_digits(return_X_y=True)
    dataset = datasets.digits(seed=1)
    rows = np.concatenate([dataset.train.x, dataset.validation.x, dataset.test.x])
    labels = np.concatenate([dataset.train.y, dataset.validation.y, dataset.test.y])
    # Sorting rows (with their label) both ways must give the same multiset of examples.
    got = np.column_stack([rows * 16, labels])
    want = np.column_stack([x_all, y_all])
    assert len(got) == 1797
    np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(want, axis=0))
    np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])])


def test_digits_reads_scikit_learns_file_as_its_loader_does_without_importing_it() -> None:
    """The CSV read equals ``load_digits`` value for value and type for type, and a fresh
    process that loads digits never imports scikit-learn (its import is ~1.8 s)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    x, y = _datasets._digits_table()
    want_x, want_y = load_digits(return_X_y=True)
    assert x.dtype == want_x.dtype and y.dtype == want_y.dtype
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
    probe = "import sys, modelhopper as mh; mh.datasets.digits(); print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_digits_falls_back_to_scikit_learns_loader_where_its_file_is_not(monkeypatch) -> None:
    from sklearn.datasets import load_digits

    monkeypatch.setattr(_datasets.importlib.util, "find_spec", lambda name: None)
    x, y = _datasets._digits_table()
    want_x, want_y = load_digits(return_X_y=True)
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)


def test_digits_same_seed_same_split_different_seed_different() -> None:
    first, again, other = datasets.digits(seed=5), datasets.digits(seed=5), datasets.digits(seed=6)
    np.testing.assert_array_equal(first.train.x, again.train.x)
    np.testing.assert_array_equal(first.validation.y, again.validation.y)
    assert not np.array_equal(first.train.y, other.train.y)


def test_digits_is_exposed_as_a_module() -> None:
    import modelhopper.data.datasets as by_import

    assert by_import is datasets
    assert callable(datasets.fashion_mnist)


# ------------------------------------------------------------- fashion_mnist (real)

needs_fashion = pytest.mark.skipif(
    _datasets._files_in(_FASHION_SYSTEM_DIR) is None,
    reason="Debian package dataset-fashion-mnist is not installed",
)


@pytest.fixture(scope="module")
def fashion():
    return datasets.fashion_mnist(root=_FASHION_SYSTEM_DIR)


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_shapes_and_values(fashion) -> None:
    assert (len(fashion.train), len(fashion.validation), len(fashion.test)) == (
        50_000,
        10_000,
        10_000,
    )
    assert fashion.n_features_shape == (1, 28, 28)
    for split in (fashion.train, fashion.validation, fashion.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert split.x.min() == 0.0 and split.x.max() == 1.0
        assert sorted(np.unique(split.y).tolist()) == list(range(10))
    assert fashion.num_classes == 10
    fashion.check_labels(10)


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_is_deterministic_and_flattens(fashion) -> None:
    again = datasets.fashion_mnist(root=_FASHION_SYSTEM_DIR, flatten=True)
    assert again.n_features_shape == (784,)
    np.testing.assert_array_equal(again.train.x[:100], fashion.train.x[:100].reshape(100, 784))
    np.testing.assert_array_equal(again.validation.y, fashion.validation.y)
    np.testing.assert_array_equal(again.test.y, fashion.test.y)


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_seed_changes_the_train_validation_split(fashion) -> None:
    other = datasets.fashion_mnist(root=_FASHION_SYSTEM_DIR, seed=1, n_train=59_000)
    assert (len(other.train), len(other.validation)) == (59_000, 1_000)
    assert not np.array_equal(other.train.y[:1000], fashion.train.y[:1000])
    np.testing.assert_array_equal(other.test.x, fashion.test.x)  # the official test set


# ------------------------------------------------------------ fashion_mnist (tiny)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_tiny_set(root: Path, n_train: int, n_test: int, gzipped: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = _idx_bytes(array)
        if gzipped:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gzipped", [True, False])
def test_fashion_mnist_reads_a_tiny_idx_set_from_root(tmp_path, gzipped) -> None:
    arrays = _write_tiny_set(tmp_path, n_train=20, n_test=6, gzipped=gzipped)
    dataset = datasets.fashion_mnist(root=tmp_path, n_train=15, seed=2)
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (15, 5, 6)
    assert dataset.train.x.shape == (15, 1, 28, 28)
    np.testing.assert_array_equal(dataset.test.x[:, 0] * 255, arrays["t10k-images-idx3-ubyte"])
    train_images = arrays["train-images-idx3-ubyte"]
    order = np.random.default_rng(2).permutation(20)
    np.testing.assert_array_equal(
        np.rint(dataset.validation.x[:, 0] * 255), train_images[order[15:]]
    )
    np.testing.assert_array_equal(dataset.train.y, order[:15] % 10)
    flat = datasets.fashion_mnist(root=str(tmp_path), n_train=15, seed=2, flatten=True)
    assert flat.train.x.shape == (15, 784)


@pytest.mark.parametrize("gzipped", [True, False])
@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("truncate", r"truncated or corrupt: it has \d+ bytes but its header \(6, 28, 28\)"),
        ("magic", r"truncated or corrupt: its magic number 0x01000803 is not an IDX header"),
        ("dtype", r"its dtype code is 0x0d; only 0x08 \(uint8\) is read"),
        ("header", r"it ends inside its header \(6 of 16 bytes\)"),
    ],
)
def test_fashion_mnist_corrupt_file_names_the_path(tmp_path, gzipped, damage, match) -> None:
    _write_tiny_set(tmp_path, n_train=20, n_test=6, gzipped=gzipped)
    datasets.fashion_mnist(root=tmp_path, n_train=15)  # valid first, so the cache is warm
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gzipped else ""))
    data = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    if damage == "truncate":
        data = data[:-7]
    elif damage == "magic":
        data = b"\x01" + data[1:]
    elif damage == "dtype":
        data = data[:2] + b"\x0d" + data[3:]
    else:
        data = data[:6]
    path.write_bytes(gzip.compress(data) if gzipped else data)
    with pytest.raises(DataError, match=match) as raised:
        datasets.fashion_mnist(root=tmp_path, n_train=15)
    assert str(path) in str(raised.value)


def test_fashion_mnist_bad_gzip_names_the_path(tmp_path) -> None:
    _write_tiny_set(tmp_path, n_train=20, n_test=6, gzipped=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"could not be read") as raised:
        datasets.fashion_mnist(root=tmp_path, n_train=15)
    assert str(path) in str(raised.value)


def test_fashion_mnist_mismatched_counts(tmp_path) -> None:
    _write_tiny_set(tmp_path, n_train=20, n_test=6, gzipped=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(np.zeros(19, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"has 20 images but .* has 19 labels"):
        datasets.fashion_mnist(root=tmp_path, n_train=15)


@pytest.mark.parametrize(
    ("n_train", "match"),
    [
        (20, r"n_train must be less than the 20 training images .* got n_train=20"),
        (0, r"n_train must be a positive int .* got 0"),
        (1.5, r"n_train must be a positive int .* got 1\.5"),
    ],
)
def test_fashion_mnist_rejects_bad_n_train(tmp_path, n_train, match) -> None:
    _write_tiny_set(tmp_path, n_train=20, n_test=6, gzipped=False)
    with pytest.raises(DataError, match=match):
        datasets.fashion_mnist(root=tmp_path, n_train=n_train)


def test_fashion_mnist_finds_files_in_modelhopper_data(tmp_path, monkeypatch) -> None:
    _write_tiny_set(tmp_path / "fashion-mnist", n_train=12, n_test=3, gzipped=True)
    monkeypatch.setenv("MODELHOPPER_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(_datasets, "_SYSTEM_DIRS", ())
    dataset = datasets.fashion_mnist(root=tmp_path / "empty", n_train=10)
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (10, 2, 3)


def test_fashion_mnist_not_found_lists_the_searched_dirs(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    home = tmp_path / "home"
    monkeypatch.delenv("MODELHOPPER_DATA", raising=False)
    monkeypatch.delenv("MODELHOPPER_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(_datasets, "_SYSTEM_DIRS", ())
    with pytest.raises(DataError, match=r"Fashion-MNIST files not found in \[") as raised:
        datasets.fashion_mnist(root=empty)
    message = str(raised.value)
    assert str(empty) in message
    assert str(home / ".cache" / "modelhopper" / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "MODELHOPPER_ALLOW_DOWNLOAD=1" in message
