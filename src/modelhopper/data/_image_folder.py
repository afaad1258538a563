"""Image folders (torchvision's ImageFolder layout) as a record source: files read as bytes.

Layout checks (classes, non-image files, empty classes) run when the source is
built, before any worker starts; the images are decoded only on the workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from modelhopper.data._encoded import IMAGE_EXTENSIONS, Codec
from modelhopper.data._streaming import RecordChunk, RecordSource
from modelhopper.errors import DataError

__all__ = ["ImageFolderSource", "scan_image_folder", "subset"]


# ------------------------------------------------------------------ image folders


def scan_image_folder(
    root: str | os.PathLike[str], name: str, classes: Sequence[str] | None = None
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``root/<class>/**/<image>``: class names, files, labels and file sizes, sorted.

    ``classes`` (those of the training root) fixes the label of each class name,
    so every split numbers classes alike.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(
            f"image folder for the {name!r} split not found: {os.fspath(root)!r}; give a "
            f"folder with one sub-folder per class (relative paths are from {os.getcwd()!r})"
        )
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(
            f"{os.fspath(root)!r} has no class sub-folders; lay images out as "
            "root/<class name>/<image file>, one sub-folder per class"
        )
    if classes is not None and sorted(classes) != found:
        raise DataError(
            f"the {name!r} split's classes {found} differ from the training split's "
            f"{sorted(classes)}; every split needs the same class folders"
        )
    names = list(classes) if classes is not None else found
    files: list[str] = []  # str, not Path: a tenth of the memory for a million files
    labels: list[int] = []
    for label, class_name in enumerate(names):
        images = _class_images(folder / class_name)
        files.extend(images)
        labels.extend([label] * len(images))
    sizes = np.fromiter((os.stat(f).st_size for f in files), dtype=np.int64, count=len(files))
    return names, files, np.asarray(labels, dtype=np.int64), sizes


def _class_images(folder: Path) -> list[str]:
    images = []
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for file_name in sorted(names):
            if file_name.startswith("."):
                continue  # .DS_Store and other hidden files are not examples
            path = os.path.join(directory, file_name)
            suffix = os.path.splitext(file_name)[1]
            if suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{path!r} in class folder {folder.name!r} is not an image (its "
                    f"extension is {suffix or 'missing'}; images end in "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}); move it out of the folder"
                )
            images.append(path)
    if not images:
        raise DataError(
            f"class folder {str(folder)!r} has no images; add images or remove the folder "
            "(its class would have no examples)"
        )
    return images


class ImageFolderSource(RecordSource):
    """Image files, read as bytes (encoded), labelled by their class folder."""

    random_access = True

    def __init__(
        self, files: Sequence[str], labels: np.ndarray, sizes: np.ndarray, codec: Codec, root: Path
    ) -> None:
        self.files = list(files)
        self._labels = labels
        self._sizes = sizes
        self.codec = codec
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def nbytes(self) -> int:
        return int(self._sizes.sum())

    def chunks(self, max_bytes: int) -> Iterator[RecordChunk]:
        for rows in _byte_bounded(self._sizes, max_bytes):
            yield self.take(rows)

    def take(self, rows: np.ndarray) -> RecordChunk:
        records = [self._read(self.files[r]) for r in rows.tolist()]
        return RecordChunk(records, self._labels[rows], [self.files[r] for r in rows.tolist()])

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise DataError(
                f"cannot read {path!r}: {e}; check that the file exists and is readable"
            ) from e

    def describe(self) -> str:
        return f"{len(self)} images under {str(self.root)!r}"


def _byte_bounded(sizes: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    """Consecutive row ranges whose sizes sum to about ``max_bytes`` (one row at least)."""
    start, total = 0, 0
    for row, size in enumerate(sizes.tolist()):
        if row > start and total + size > max_bytes:
            yield np.arange(start, row)
            start, total = row, 0
        total += size
    if start < len(sizes):
        yield np.arange(start, len(sizes))


def subset(source: ImageFolderSource, rows: np.ndarray) -> ImageFolderSource:
    """The images at ``rows`` (a seeded split of one folder into train/validation/test)."""
    rows = np.sort(rows)
    assert source.codec is not None  # image folders are always encoded
    return ImageFolderSource(
        [source.files[r] for r in rows.tolist()], source.labels[rows], source._sizes[rows],
        source.codec, source.root,
    )  # fmt: skip
