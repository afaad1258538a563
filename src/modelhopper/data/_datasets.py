"""Built-in real datasets: scikit-learn's digits and Fashion-MNIST read from IDX files.

Exposed as ``modelhopper.data.datasets``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from modelhopper.data._dataset import Dataset, Split
from modelhopper.data._wordnet import TextSet, wordnet_noun_glosses
from modelhopper.errors import DataError

__all__ = ["TextSet", "digits", "fashion_mnist", "fashion_mnist_folder", "wordnet_noun_glosses"]


# --------------------------------------------------------------------------- digits


def digits(*, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 examples, 10 classes, no download).

    ``x`` is float32 of shape (N, 64) scaled to [0, 1]; ``y`` is int64. The examples are
    shuffled with ``seed`` and cut 60/20/20 into train / validation / test.
    """
    x, y = _digits_arrays()
    return Dataset.from_arrays(x, y, fractions=(0.6, 0.2, 0.2), seed=seed)


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    x, y = _digits_table()
    x = (x / 16.0).astype(np.float32)  # pixel intensities are 0..16
    y = y.astype(np.int64)
    return _read_only(x), _read_only(y)


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits(return_X_y=True)``, read from the CSV scikit-learn ships without
    importing ``sklearn.datasets``: that import (scipy.stats and more) takes ~1.8 s, 100x
    the read, in every script and worker that loads digits. scikit-learn's own loader
    where the file is not where this scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = spec.submodule_search_locations if spec is not None else None
    path = Path(folders[0], "datasets", "data", "digits.csv.gz") if folders else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        return load_digits(return_X_y=True)
    table = np.loadtxt(path, delimiter=",")  # 64 pixel columns, then the label
    return table[:, :-1], table[:, -1].astype(np.int64)


def _read_only(array: np.ndarray) -> np.ndarray:
    # Cached arrays are shared by every call; freezing them keeps callers from corrupting them.
    array.setflags(write=False)
    return array


# -------------------------------------------------------------------- fashion_mnist

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_SUBDIR = "fashion-mnist"
_FASHION_CLASSES = 10
# Installed by the Debian package dataset-fashion-mnist; tests patch this tuple.
_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)


def fashion_mnist(
    *,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    flatten: bool = False,
    n_train: int = 50_000,
) -> Dataset:
    """Fashion-MNIST: 28x28 grey images of clothing in 10 classes.

    ``train`` holds ``n_train`` examples and ``validation`` the rest of the official
    60,000 training images, chosen by a permutation seeded with ``seed``; ``test`` is the
    official 10,000. ``x`` is float32 in [0, 1] of shape (N, 1, 28, 28), or (N, 784) with
    ``flatten=True``; ``y`` is int64 in 0..9.

    The four IDX files (gzipped or plain) are looked up in ``root``, ``$MODELHOPPER_DATA``,
    ``$MODELHOPPER_DATA/fashion-mnist``, ``~/.cache/modelhopper/fashion-mnist`` and
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
    with ``MODELHOPPER_ALLOW_DOWNLOAD=1`` they are downloaded into the cache if absent.
    """
    if isinstance(n_train, bool) or not isinstance(n_train, int | np.integer) or n_train < 1:
        raise DataError(
            f"n_train must be a positive int (the rest of the 60,000 training images is "
            f"validation), got {n_train!r}; e.g. n_train=50_000"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}; e.g. seed=0")
    paths = _find_fashion_files(root)
    train_images, train_labels = _load_pair(paths["train_images"], paths["train_labels"])
    test_images, test_labels = _load_pair(paths["test_images"], paths["test_labels"])
    n_total = len(train_images)
    if n_train >= n_total:
        raise DataError(
            f"n_train must be less than the {n_total} training images so that validation is "
            f"not empty, got n_train={n_train}; e.g. n_train={n_total * 5 // 6}"
        )
    order = np.random.default_rng(seed).permutation(n_total)
    train_index, val_index = order[:n_train], order[n_train:]
    return Dataset(
        Split(_scale(train_images[train_index], flatten), train_labels[train_index], name="train"),
        Split(_scale(train_images[val_index], flatten), train_labels[val_index], name="validation"),
        Split(_scale(test_images, flatten), test_labels, name="test"),
    )


def _scale(images: np.ndarray, flatten: bool) -> np.ndarray:
    x = images.astype(np.float32)
    np.divide(x, 255.0, out=x)
    shape = (len(x), -1) if flatten else (len(x), 1, *images.shape[1:])
    return x.reshape(shape)


FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip


def fashion_mnist_folder(
    directory: str | os.PathLike[str],
    *,
    split: str = "train",
    limit: int | None = None,
    image_format: str = "png",
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write Fashion-MNIST's images as files in class folders (torchvision's ImageFolder layout).

    ``directory/<class>/<index>.<png|jpg>`` for the official ``split`` ("train",
    60,000 images, or "test", 10,000), its first ``limit`` images if given. Files
    already there are kept, so a second call costs only a directory listing.
    Returns ``directory``; read it back with ``Dataset.from_image_folder``.
    """
    from PIL import Image

    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    extension = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}.get(image_format)
    if extension is None:
        raise DataError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    paths = _find_fashion_files(root)
    images, labels = _load_pair(paths[f"{split}_images"], paths[f"{split}_labels"])
    count = len(images) if limit is None else min(int(limit), len(images))
    folder = Path(directory)
    for name in FASHION_MNIST_CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / FASHION_MNIST_CLASSES[int(labels[index])] / f"{index:05d}.{extension}"
        if not path.exists():
            Image.fromarray(images[index]).save(path)
    return folder


def _load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = _parse_idx_cached(*_file_key(images_path))
    labels = _parse_idx_cached(*_file_key(labels_path))
    if images.ndim != 3:
        raise DataError(
            f"{images_path} holds an array of shape {images.shape}; Fashion-MNIST images must "
            f"be 3-D (N, rows, cols) — the file is misnamed or corrupt"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path} holds an array of shape {labels.shape}; Fashion-MNIST labels must "
            f"be 1-D — the file is misnamed or corrupt"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            f"labels; the files are from different sets or corrupt — replace them"
        )
    if labels.size and int(labels.max()) >= _FASHION_CLASSES:
        raise DataError(
            f"{labels_path} has label {int(labels.max())}, outside 0..{_FASHION_CLASSES - 1}; "
            f"the file is corrupt — replace it"
        )
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------- finding the files


def _search_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    dirs = [Path(root).expanduser()] if root is not None else []
    data_home = os.environ.get("MODELHOPPER_DATA")
    if data_home:
        dirs += [Path(data_home).expanduser(), Path(data_home).expanduser() / _FASHION_SUBDIR]
    dirs.append(_cache_dir())
    dirs += _SYSTEM_DIRS
    return dirs


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "modelhopper" / _FASHION_SUBDIR


def _files_in(directory: Path) -> dict[str, Path] | None:
    # Prefer the plain file over the gzipped one: it skips a decompression.
    found = {}
    for key, stem in _FASHION_FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _find_fashion_files(root: str | os.PathLike[str] | None) -> dict[str, Path]:
    dirs = _search_dirs(root)
    for directory in dirs:
        found = _files_in(directory)
        if found is not None:
            return found
    if os.environ.get("MODELHOPPER_ALLOW_DOWNLOAD") == "1":
        return _download_fashion(_cache_dir())
    searched = ", ".join(str(d) for d in dirs)
    raise DataError(
        f"Fashion-MNIST files not found in [{searched}]; install the Debian package "
        f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist), put the four IDX "
        f"files in $MODELHOPPER_DATA, or set MODELHOPPER_ALLOW_DOWNLOAD=1 to download them"
    )


def _download_fashion(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for stem in _FASHION_FILES.values():
        target = directory / f"{stem}.gz"
        if target.is_file():
            continue
        partial = target.with_suffix(".gz.part")  # never leave a half file under the real name
        url = f"{_FASHION_URL}{stem}.gz"
        try:
            urllib.request.urlretrieve(url, partial)
        except OSError as e:
            raise DataError(
                f"could not download {url} into {directory}: {e}; check the network or put "
                f"the four IDX files there by hand"
            ) from e
        partial.replace(target)
    found = _files_in(directory)
    assert found is not None  # just written above
    return found


# -------------------------------------------------------------------------- IDX files

_IDX_UBYTE = 0x08


def _file_key(path: Path) -> tuple[str, int, int]:
    # mtime and size in the cache key: a file replaced on disk is parsed again.
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _parse_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    return _read_only(_parse_idx(Path(path)))


def _parse_idx(path: Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped if its name ends in .gz), strictly."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise _corrupt(path, f"it has only {len(data)} bytes, fewer than the 4-byte magic number")
    zero_a, zero_b, dtype_code, ndim = data[:4]
    if zero_a or zero_b or ndim == 0:
        raise _corrupt(path, f"its magic number 0x{data[:4].hex()} is not an IDX header")
    if dtype_code != _IDX_UBYTE:
        raise _corrupt(path, f"its dtype code is 0x{dtype_code:02x}; only 0x08 (uint8) is read")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise _corrupt(path, f"it ends inside its header ({len(data)} of {header_size} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise _corrupt(path, f"it has {len(data)} bytes but its header {dims} implies {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(path, f"it could not be read ({e})") from e


def _corrupt(path: Path, reason: str) -> DataError:
    return DataError(
        f"IDX file {path} is truncated or corrupt: {reason}; delete it and reinstall or "
        f"download it again"
    )
