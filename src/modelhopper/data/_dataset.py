"""Split and Dataset: validated in-memory arrays or streamed sources, and the constructors
(numpy, pandas in memory; Parquet, image folders, Hugging Face and torch datasets
streamed: their readers are in ``_image_folder``, ``_parquet`` and ``_stream_sources``).

Everything is checked here, before any worker starts, so that a bad column or a NaN
is reported once with its fix rather than as a crash inside a sub-epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelhopper.data._encoded import Codec
from modelhopper.data._sources import frame_arrays, torch_arrays
from modelhopper.data._split import Split
from modelhopper.data._streaming import DEFAULT_MEMORY_BYTES, StreamedSplit
from modelhopper.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import torch.utils.data

__all__ = ["Split", "Dataset"]

_SPLIT_NAMES = ("train", "validation", "test")
_FRACTION_TOLERANCE = 1e-9


# ------------------------------------------------------------------------- Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train, a validation and an optional test split with matching examples.

    A split is a :class:`Split` (arrays in memory) or a :class:`StreamedSplit`
    (read from its files while sharding, never held whole). ``classes`` names
    the classes when the source knows them (an image folder's sub-folders).
    """

    train: Split | StreamedSplit
    validation: Split | StreamedSplit
    test: Split | StreamedSplit | None = None
    classes: tuple[str, ...] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        for name, split in zip(_SPLIT_NAMES, (self.train, self.validation, self.test), strict=True):
            if split is None and name == "test":
                continue
            if not isinstance(split, Split | StreamedSplit):
                raise DataError(
                    f"Dataset({name}=...) must be a Split, got {type(split).__name__}; build "
                    f"one with Split(x, y) or use Dataset.from_numpy(...)"
                )
        for name, split in self._named_splits():
            if name == "train":
                continue
            if isinstance(split, Split) and isinstance(self.train, Split):
                _check_compatible(self.train, split, name)
            elif _codec_of(split) != _codec_of(self.train):
                raise DataError(
                    f"the {name!r} split holds {_kind_of(split)} examples but the 'train' split "
                    f"{_kind_of(self.train)}; read every split the same way"
                )

    @property
    def streamed(self) -> bool:
        """True when some split is read from its source while sharding."""
        return any(isinstance(split, StreamedSplit) for _, split in self._named_splits())

    # -- constructors -----------------------------------------------------------

    @classmethod
    def from_numpy(
        cls,
        x_train: Any,
        y_train: Any,
        x_val: Any,
        y_val: Any,
        x_test: Any | None = None,
        y_test: Any | None = None,
    ) -> Dataset:
        """Build a Dataset from arrays (anything ``numpy.asarray`` accepts)."""
        if (x_test is None) != (y_test is None):
            given, missing = ("x_test", "y_test") if y_test is None else ("y_test", "x_test")
            raise DataError(
                f"{given} was given but {missing} is None; pass both for a test split or "
                f"neither for none"
            )
        test = None if x_test is None or y_test is None else Split(x_test, y_test, name="test")
        return cls(
            Split(x_train, y_train, name="train"),
            Split(x_val, y_val, name="validation"),
            test,
        )

    @classmethod
    def from_pandas(
        cls,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        test: pd.DataFrame | None = None,
        *,
        label: str,
        features: Sequence[str] | None = None,
    ) -> Dataset:
        """Build a Dataset from DataFrames; ``features`` defaults to every column but ``label``."""
        frames = {"train": train, "validation": validation, "test": test}
        splits = {
            name: Split(*frame_arrays(frame, name, label, features), name=name)
            for name, frame in frames.items()
            if frame is not None
        }
        return cls(splits["train"], splits["validation"], splits.get("test"))

    @classmethod
    def from_parquet(
        cls,
        train: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        validation: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        test: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        label: str,
        features: Sequence[str] | None = None,
        image_column: str | None = None,
        shape: Sequence[int] | None = None,
        mode: str | None = None,
        on_bad_record: str = "raise",
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> Dataset:
        """A Dataset streamed from Parquet: per split a file, a list of files or a directory.

        Read with ``pyarrow.dataset`` record batch by record batch, never whole.
        Features are numeric columns (stacked into a vector per example), one
        fixed-size list column (``shape`` reshapes each example, e.g. (1, 28, 28)),
        or, with ``image_column``, one binary column of encoded images kept encoded
        and decoded per batch on the workers (``mode``, ``on_bad_record``: see
        ``from_image_folder``). Every file of a split must have the same schema.
        """
        from modelhopper.data._parquet import ParquetSource

        codec = Codec(mode=mode, on_bad_record=on_bad_record) if image_column else None
        if image_column is not None:
            features = [image_column]
        paths = {"train": train, "validation": validation, "test": test}
        splits = {
            name: StreamedSplit(
                ParquetSource(path, name, label=label, features=features, codec=codec, shape=shape),
                name=name,
                memory_bytes=memory_bytes,
            )  # fmt: skip
            for name, path in paths.items()
            if path is not None
        }
        return cls(splits["train"], splits["validation"], splits.get("test"))

    @classmethod
    def from_image_folder(
        cls,
        train: str | os.PathLike[str],
        validation: str | os.PathLike[str] | None = None,
        test: str | os.PathLike[str] | None = None,
        *,
        fractions: Sequence[float] | None = None,
        seed: int = 0,
        mode: str | None = None,
        on_bad_record: str = "raise",
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> Dataset:
        """A Dataset of image files laid out as ``root/<class>/<image>`` (as ImageFolder).

        Give a root per split, or one ``train`` root and ``fractions`` (train,
        validation, test) to split it with ``seed``. Images stay encoded (their
        file bytes) in the shards and are decoded per batch on the workers, as
        uint8 ``C x H x W`` tensors: ``mode`` "L" (grey), "RGB", or None (each
        file's own). Class labels are the sorted sub-folder names' positions
        (``dataset.classes``). ``on_bad_record="skip"`` leaves images that cannot
        be decoded out of their batch (and counts them) instead of failing the MST.
        """
        from modelhopper.data._image_folder import ImageFolderSource, scan_image_folder, subset

        codec = Codec(mode=mode, on_bad_record=on_bad_record)
        if (validation is None) == (fractions is None):
            raise DataError(
                "give either a validation folder or fractions=(train, validation, test) to "
                "split the training folder, not both or neither"
            )
        classes, files, labels, sizes = scan_image_folder(train, "train")
        root = Path(train)
        whole = ImageFolderSource(files, labels, sizes, codec, root)
        if fractions is not None:
            _check_seed(seed)
            sizes_ = _split_sizes(len(whole), _check_fractions(fractions))
            order = np.random.default_rng(seed).permutation(len(whole))
            parts = np.split(order, [sizes_[0], sizes_[0] + sizes_[1]])
            sources = [subset(whole, part) if len(part) else None for part in parts]
        else:
            sources = [whole]
            for name, folder in (("validation", validation), ("test", test)):
                if folder is None:
                    sources.append(None)
                    continue
                _, f, y, b = scan_image_folder(folder, name, classes)
                sources.append(ImageFolderSource(f, y, b, codec, Path(folder)))
        splits = [
            StreamedSplit(source, name=name, memory_bytes=memory_bytes) if source else None
            for name, source in zip(_SPLIT_NAMES, sources, strict=True)
        ]
        _check_first_record(splits[0])
        return cls(splits[0], splits[1], splits[2], classes=tuple(classes))  # type: ignore[arg-type]

    @classmethod
    def from_huggingface(
        cls,
        data: Any,
        *,
        label: str,
        features: Sequence[str] | None = None,
        splits: Sequence[str] = ("train", "validation", "test"),
        mode: str | None = None,
        on_bad_record: str = "raise",
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> Dataset:
        """A Dataset from a Hugging Face ``datasets.DatasetDict`` (or a tuple of ``Dataset``).

        ``splits`` names the dict's train, validation and (optional) test splits.
        The Arrow tables Hugging Face memory-maps are read by row ranges; an
        ``Image`` feature stays encoded and is decoded per batch on the workers.
        """
        from modelhopper.data._stream_sources import HuggingFaceSource

        codec = Codec(mode=mode, on_bad_record=on_bad_record)
        parts = _huggingface_splits(data, splits)
        streamed = [
            StreamedSplit(
                HuggingFaceSource(part, name, label=label, features=features, codec=codec),
                name=name, memory_bytes=memory_bytes,
            ) if part is not None else None
            for name, part in zip(_SPLIT_NAMES, parts, strict=True)
        ]  # fmt: skip
        classes = _huggingface_classes(parts[0], label)
        if streamed[0] is not None and streamed[0].encoded:
            _check_first_record(streamed[0])
        return cls(streamed[0], streamed[1], streamed[2], classes=classes)  # type: ignore[arg-type]

    @classmethod
    def from_torch(
        cls,
        train: torch.utils.data.Dataset,
        validation: torch.utils.data.Dataset,
        test: torch.utils.data.Dataset | None = None,
        *,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> Dataset:
        """A Dataset from torch datasets of ``(x, y)`` pairs.

        A ``TensorDataset`` (already in memory) is used as its arrays; any other
        map-style dataset is read item by item in chunks of ``memory_bytes`` while
        sharding, never stacked whole (its ``__getitem__`` may decode files).
        """
        import torch  # lazily: the core of modelhopper imports without torch

        from modelhopper.data._stream_sources import TorchSource

        torch_sets = {"train": train, "validation": validation, "test": test}
        splits: dict[str, Split | StreamedSplit] = {}
        for name, torch_set in torch_sets.items():
            if torch_set is None:
                continue
            if isinstance(torch_set, torch.utils.data.TensorDataset) or not hasattr(
                torch_set, "__getitem__"
            ):
                splits[name] = Split(*torch_arrays(torch_set, name, torch), name=name)
            else:
                streamed = StreamedSplit(TorchSource(torch_set, name), name=name,
                                         memory_bytes=memory_bytes)  # fmt: skip
                streamed.head(2)  # the first items' checks run now, not while sharding
                splits[name] = streamed
        return cls(splits["train"], splits["validation"], splits.get("test"))

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        y: Any,
        *,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        seed: int = 0,
    ) -> Dataset:
        """Shuffle ``(x, y)`` with ``seed`` and cut it into train / validation / test.

        ``fractions`` are (train, validation, test), summing to 1; a test fraction of 0
        gives no test split.
        """
        train_fraction, val_fraction, test_fraction = _check_fractions(fractions)
        _check_seed(seed)
        whole = Split(x, y, name="data")
        n_train, n_val, n_test = _split_sizes(
            len(whole), (train_fraction, val_fraction, test_fraction)
        )
        order = np.random.default_rng(seed).permutation(len(whole))
        train_index, val_index, test_index = np.split(order, [n_train, n_train + n_val])
        return cls(
            Split(whole.x[train_index], whole.y[train_index], name="train"),
            Split(whole.x[val_index], whole.y[val_index], name="validation"),
            Split(whole.x[test_index], whole.y[test_index], name="test") if n_test else None,
        )

    # -- properties -------------------------------------------------------------

    @property
    def n_features_shape(self) -> tuple[int, ...]:
        """Shape of one example's features (``x.shape[1:]``; a streamed split decodes one)."""
        x = self.train.x if isinstance(self.train, Split) else self.train.head(1)[0]
        return tuple(int(d) for d in x.shape[1:])

    @property
    def nbytes(self) -> int:
        """Bytes held by every split together (as stored, for streamed splits)."""
        return sum(split.nbytes for _, split in self._named_splits())

    @property
    def num_classes(self) -> int | None:
        """Largest integer label over all splits plus one; None for float targets or when
        a streamed split's labels are known only once it is read."""
        labels = [split.y for _, split in self._named_splits() if split.y is not None]
        if len(labels) < len(list(self._named_splits())) or labels[0].dtype.kind == "f":
            return None
        return max(int(y.max()) for y in labels) + 1

    def check_labels(self, num_classes: int) -> None:
        """Raise DataError unless every integer label lies in ``[0, num_classes)``.

        Float targets (regression, soft labels) have nothing to check and pass.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
            raise DataError(
                f"num_classes must be an int, got {num_classes!r}; pass the model's output size"
            )
        if num_classes < 1:
            raise DataError(
                f"num_classes must be >= 1, got {num_classes}; pass the model's output size"
            )
        for name, split in self._named_splits():
            if split.y is None or split.y.dtype.kind == "f":
                continue  # a streamed split's labels are checked on its shards
            check_label_range(split.y, num_classes, name)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(split)}" for name, split in self._named_splits())
        if isinstance(self.train, StreamedSplit):
            return f"Dataset({sizes}, {_kind_of(self.train)}, {self.nbytes / 2**20:.1f} MiB stored)"
        classes = self.num_classes
        target = f"classes={classes}" if classes is not None else f"y={self.train.y.dtype}"
        return (
            f"Dataset({sizes}, x={self.train.x.dtype}{self.n_features_shape}, {target}, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )

    def _named_splits(self) -> Iterator[tuple[str, Split | StreamedSplit]]:
        yield "train", self.train
        yield "validation", self.validation
        if self.test is not None:
            yield "test", self.test


def check_label_range(y: np.ndarray, num_classes: int, name: str) -> None:
    """Raise DataError unless every label of ``y`` lies in ``[0, num_classes)``."""
    low, high = int(y.min()), int(y.max())
    bad = high if high >= num_classes else low if low < 0 else None
    if bad is not None:
        raise DataError(
            f"label {bad} in the {name!r} split is outside [0, {num_classes}) for a "
            f"{num_classes}-class loss; check the model's output size (num_classes) "
            f"or the labels"
        )


def _codec_of(split: Split | StreamedSplit) -> Codec | None:
    return split.source.codec if isinstance(split, StreamedSplit) else None


def _kind_of(split: Split | StreamedSplit) -> str:
    codec = _codec_of(split)
    return f"encoded ({codec.kind}, mode={codec.mode})" if codec is not None else "dense"


def _check_first_record(split: StreamedSplit | None) -> None:
    """Decode the first record now: a wrong format shows before any worker starts."""
    if split is not None:
        split.head(1)


def _huggingface_splits(data: Any, names: Sequence[str]) -> list[Any]:
    if isinstance(data, tuple | list):
        parts = list(data) + [None] * (3 - len(data))
    elif hasattr(data, "keys"):
        missing = [n for n in names[:2] if n not in data]
        if missing:
            raise DataError(
                f"the Hugging Face DatasetDict has no split {missing[0]!r}; its splits are "
                f"{list(data.keys())}; pass splits=(train, validation[, test]) naming them, or "
                "make a validation split with dataset.train_test_split(test_size=0.2, seed=0)"
            )
        parts = [data[n] if n in data else None for n in names] + [None] * (3 - len(names))
    else:
        raise DataError(
            f"data must be a datasets.DatasetDict or a (train, validation[, test]) tuple of "
            f"datasets.Dataset, got {type(data).__name__}"
        )
    if parts[0] is None or parts[1] is None:
        raise DataError("from_huggingface needs a train and a validation split")
    return parts[:3]


def _huggingface_classes(train: Any, label: str) -> tuple[str, ...] | None:
    feature = getattr(train, "features", {}).get(label)
    names = getattr(feature, "names", None)
    return tuple(names) if names else None


def _check_compatible(train: Split, other: Split, name: str) -> None:
    # Shapes and label kinds must agree, or one model cannot train on train and score on `other`.
    if other.x.shape[1:] != train.x.shape[1:]:
        raise DataError(
            f"x of the {name!r} split has feature shape {tuple(other.x.shape[1:])} but the "
            f"'train' split has {tuple(train.x.shape[1:])}; every split must have the same "
            f"features"
        )
    if other.y.shape[1:] != train.y.shape[1:]:
        raise DataError(
            f"y of the {name!r} split has shape {tuple(other.y.shape[1:])} per example but the "
            f"'train' split has {tuple(train.y.shape[1:])}; every split must have the same "
            f"kind of labels"
        )
    if other.y.dtype != train.y.dtype:
        raise DataError(
            f"y of the {name!r} split has dtype {other.y.dtype} but the 'train' split has "
            f"{train.y.dtype}; use integer class labels in every split or float targets in "
            f"every split"
        )


# -------------------------------------------------------------------- from_arrays


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(fractions) if isinstance(fractions, Sequence) else ()
    if len(values) != 3 or not all(_is_real(v) for v in values):
        raise DataError(
            f"fractions must be three numbers (train, validation, test), got {fractions!r}; "
            f"e.g. fractions=(0.6, 0.2, 0.2)"
        )
    train, validation, test = (float(v) for v in values)
    if not (train > 0 and validation > 0 and test >= 0) or not math.isfinite(test):
        raise DataError(
            f"fractions must be > 0 for train and validation and >= 0 for test, got "
            f"{fractions!r}; e.g. fractions=(0.8, 0.2, 0.0) for no test split"
        )
    total = train + validation + test
    if abs(total - 1.0) > _FRACTION_TOLERANCE:
        raise DataError(
            f"fractions must sum to 1, got {fractions!r} (sum {total:g}); e.g. "
            f"fractions=(0.6, 0.2, 0.2)"
        )
    return train, validation, test


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}; e.g. seed=0")


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    # Every split with a positive fraction gets at least one example; train takes the rest.
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n)) if fractions[2] > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        needed = 3 if n_test else 2
        raise DataError(
            f"x has {n} examples, too few to split with fractions={fractions}; need at least "
            f"{needed} (one per split) and, in practice, many more"
        )
    return n_train, n_val, n_test
