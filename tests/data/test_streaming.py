from __future__ import annotations

import hashlib
import io
import threading
import tracemalloc
from pathlib import Path

import datasets as hf
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from modelhopper import provenance
from modelhopper.data import BadRecordError, Dataset, StreamedSplit
from modelhopper.data._datasets import fashion_mnist_folder
from modelhopper.data._encoded import Codec, EncodedColumn, EncodedWriter
from modelhopper.data._image_folder import ImageFolderSource
from modelhopper.data._parquet import ParquetSource
from modelhopper.data._sharding import open_shard, shard_indices, write_shards
from modelhopper.data._streaming import stack_examples
from modelhopper.errors import DataError

MIB = 2**20


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _shards(infos) -> list:
    return [open_shard(info.path) for info in infos]


def _records(column: EncodedColumn) -> list[tuple[str, bytes]]:
    return [(column.origin(r), bytes(column.record(r))) for r in range(len(column))]


def _files(infos) -> dict[str, bytes]:
    return {
        f"{Path(info.path).name}/{f.name}": f.read_bytes()
        for info in infos
        for f in sorted(Path(info.path).iterdir())
        if f.suffix in (".npy", ".arrow")
    }


def _fingerprint(dataset: Dataset, directory: Path, seed: int = 0, n_shards: int = 3) -> str:
    digest = hashlib.sha256()
    infos = write_shards(dataset, n_shards, directory, seed, digest=digest)
    assert digest.hexdigest() == provenance.data_fingerprint([i.path for i in infos])
    return digest.hexdigest()


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> tuple[Path, Path]:
    """A training folder (300 images) and a validation folder (100) of real Fashion-MNIST PNGs."""
    root = tmp_path_factory.mktemp("fashion")
    train = fashion_mnist_folder(root / "train", limit=300)
    validation = fashion_mnist_folder(root / "validation", split="test", limit=100)
    return train, validation


def _class_folder(root: Path, arrays: dict[str, list[np.ndarray]]) -> Path:
    for name, images in arrays.items():
        (root / name).mkdir(parents=True)
        for index, image in enumerate(images):
            (root / name / f"{index:03d}.png").write_bytes(_png(image))
    return root


def _grey(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size), value, dtype=np.uint8)


# ------------------------------------------------------------------ image folders


def _check_image_shards(infos, roots: dict[str, list[Path]], classes: tuple[str, ...]) -> None:
    """Every image of each split once across shards, bytes as on disk, label = class index."""
    for prefix, paths in roots.items():
        files, seen = [str(f) for f in paths], []
        for shard in _shards(infos):
            column, labels = getattr(shard, f"{prefix}_x"), getattr(shard, f"{prefix}_y")
            records = _records(column)
            origins = [origin for origin, _ in records]
            assert origins == sorted(origins, key=files.index)  # source order within a shard
            for (origin, data), label in zip(records, labels, strict=True):
                assert data == Path(origin).read_bytes()
                assert label == classes.index(Path(origin).parent.name)
            seen.extend(origins)
        assert sorted(seen) == sorted(files)


def test_image_folder_shards_hold_every_image_once(fashion, tmp_path) -> None:
    train, validation = fashion
    dataset = Dataset.from_image_folder(train, validation)
    classes = tuple(sorted(p.name for p in train.iterdir()))
    assert dataset.classes == classes
    assert (len(dataset.train), len(dataset.validation)) == (300, 100)
    infos = write_shards(dataset, 3, tmp_path / "shards", seed=0)
    assert [i.n_train for i in infos] == [100, 100, 100]
    _check_image_shards(infos, {"train": _images(train), "val": _images(validation)}, classes)
    examples, kept = open_shard(infos[0].path).train_x.decode([0, 5])
    assert kept == [0, 1]
    assert [(e.dtype, e.shape) for e in examples] == [(np.uint8, (1, 28, 28))] * 2
    origin = open_shard(infos[0].path).train_x.origin(5)
    np.testing.assert_array_equal(examples[1][0], np.asarray(Image.open(origin)))


def test_image_folder_fractions_split_one_root(fashion, tmp_path) -> None:
    train, _ = fashion
    dataset = Dataset.from_image_folder(train, fractions=(0.6, 0.2, 0.2), seed=3)
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (180, 60, 60)
    parts = [dataset.train.source.files, dataset.validation.source.files, dataset.test.source.files]
    assert sorted(Path(f) for part in parts for f in part) == _images(train)
    infos = write_shards(dataset, 2, tmp_path / "shards", seed=0)
    roots = {"train": list(parts[0]), "val": list(parts[1])}
    _check_image_shards(infos, roots, dataset.classes)
    other = Dataset.from_image_folder(train, fractions=(0.6, 0.2, 0.2), seed=4)
    assert other.train.source.files != parts[0]


def test_image_folder_mode_rgb_gives_three_channels(fashion, tmp_path) -> None:
    train, validation = fashion
    dataset = Dataset.from_image_folder(train, validation, mode="RGB")
    x, _ = dataset.train.head(2)
    assert (x.dtype, x.shape) == (np.uint8, (2, 3, 28, 28))
    np.testing.assert_array_equal(x[:, 0], x[:, 2])  # grey images: equal channels
    infos = write_shards(dataset, 2, tmp_path / "shards", seed=0)
    examples, _ = open_shard(infos[1].path).val_x.decode([0])
    assert examples[0].shape == (3, 28, 28)


# ------------------------------------------------- threaded vs routed, bounded memory


@pytest.fixture(scope="module")
def noise(tmp_path_factory) -> tuple[Path, int]:
    """An image folder of 140 PNGs of colour noise (which does not compress): ~10 MiB."""
    rng = np.random.default_rng(0)
    images = {
        c: [rng.integers(0, 256, (160, 160, 3), dtype=np.uint8) for _ in range(70)]
        for c in ("a", "b")
    }
    root = _class_folder(tmp_path_factory.mktemp("noise") / "images", images)
    return root, sum(f.stat().st_size for f in _images(root))


def _noise_dataset(noise: tuple[Path, int], memory_bytes: int = 256 * MIB) -> Dataset:
    return Dataset.from_image_folder(noise[0], fractions=(0.9, 0.1, 0.0), memory_bytes=memory_bytes)


def test_threaded_and_routed_builds_write_identical_shards(noise, tmp_path, monkeypatch) -> None:
    dataset = _noise_dataset(noise, memory_bytes=4 * MIB)  # 2 threads, chunks of 2 MiB
    threaded = write_shards(dataset, 3, tmp_path / "threaded", seed=1)
    monkeypatch.setattr(ImageFolderSource, "random_access", False)  # read in order, route rows
    routed = write_shards(dataset, 3, tmp_path / "routed", seed=1)
    assert _files(threaded) == _files(routed)
    assert len(_files(threaded)) == 3 * 4
    batches = pa.ipc.open_file(Path(threaded[0].path) / "train_x.arrow").num_record_batches
    assert batches > 1  # several record batches, cut alike by both


def test_fingerprint_ignores_memory_bytes_and_follows_seed(noise, tmp_path) -> None:
    fingerprint = _fingerprint(_noise_dataset(noise, memory_bytes=MIB), tmp_path / "small")
    default = _noise_dataset(noise)
    assert _fingerprint(default, tmp_path / "default") == fingerprint
    assert _fingerprint(default, tmp_path / "seed-1", seed=1) != fingerprint


def test_fingerprint_of_parquet_ignores_memory_bytes(tmp_path) -> None:
    _numeric_files(tmp_path / "train", n_files=3, rows=40_000)  # 2.8 MiB of rows
    small = Dataset.from_parquet(
        tmp_path / "train", tmp_path / "train", label="y", memory_bytes=MIB
    )
    default = Dataset.from_parquet(tmp_path / "train", tmp_path / "train", label="y")
    assert _fingerprint(small, tmp_path / "small") == _fingerprint(default, tmp_path / "default")


@pytest.mark.parametrize("random_access", [True, False], ids=["threaded", "routed"])
def test_sharding_an_image_folder_holds_a_bounded_part_of_it(
    noise, tmp_path, monkeypatch, random_access
) -> None:
    size = noise[1]
    assert size > 10 * MIB  # ten times the bound
    dataset = _noise_dataset(noise, memory_bytes=MIB)
    monkeypatch.setattr(ImageFolderSource, "random_access", random_access)
    tracemalloc.start()
    try:
        infos = write_shards(dataset, 2, tmp_path / "shards", seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(i.nbytes for i in infos) == size + 8 * 140  # the images and int64 labels
    # memory_bytes, plus a record batch (EncodedWriter.flush_bytes) per shard file being written
    assert peak < 3 * MIB, f"peak {peak / MIB:.1f} MiB for {size / MIB:.1f} MiB of images"


# ------------------------------------------------------------------------ Parquet


def _numeric_files(folder: Path, n_files: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Files of columns a (row id), b (float) and y; the rows of all files in file order."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = np.arange(n_files * rows)
    b = rng.normal(size=len(ids))
    y = rng.integers(0, 4, size=len(ids))
    for k in range(n_files):
        part = slice(k * rows, (k + 1) * rows)
        table = pa.table({"a": ids[part], "b": b[part], "y": y[part]})
        pq.write_table(table, folder / f"part-{k}.parquet")
    return np.stack([ids, b], axis=1).astype(np.float32), y


def _count_chunks(monkeypatch) -> list[int]:
    """Lengths of the chunks every ParquetSource yields from now on."""
    lengths: list[int] = []
    chunks = ParquetSource.chunks

    def counted(self, max_bytes):
        for chunk in chunks(self, max_bytes):
            lengths.append(len(chunk))
            yield chunk

    monkeypatch.setattr(ParquetSource, "chunks", counted)
    return lengths


def _check_dense_shards(infos, prefix: str, x: np.ndarray, y: np.ndarray, seed: int) -> None:
    """Shard k holds the rows of its seeded part, in source order."""
    parts = shard_indices(len(y), len(infos), seed, salt=0 if prefix == "train" else 1)
    for shard, rows in zip(_shards(infos), parts, strict=True):
        rows = np.sort(rows)
        np.testing.assert_array_equal(getattr(shard, f"{prefix}_x"), x[rows])
        np.testing.assert_array_equal(getattr(shard, f"{prefix}_y"), y[rows])


def test_parquet_directory_streams_numeric_columns(tmp_path, monkeypatch) -> None:
    x, y = _numeric_files(tmp_path / "train", n_files=3, rows=20_000)
    vx, vy = _numeric_files(tmp_path / "validation", n_files=2, rows=50)
    dataset = Dataset.from_parquet(
        tmp_path / "train", tmp_path / "validation", label="y", memory_bytes=MIB
    )
    assert (len(dataset.train), len(dataset.validation)) == (60_000, 100)
    np.testing.assert_array_equal(dataset.train.y, y)
    lengths = _count_chunks(monkeypatch)
    infos = write_shards(dataset, 3, tmp_path / "shards", seed=2)
    assert sum(lengths) == 60_100 and max(lengths) < 20_000  # several chunks per file
    _check_dense_shards(infos, "train", x, y, seed=2)
    _check_dense_shards(infos, "val", vx, vy, seed=2)


def test_parquet_hive_partitioned_directory(tmp_path) -> None:
    n = 300
    table = pa.table(
        {
            "a": np.arange(n),
            "b": np.arange(n) * 0.5,
            "y": np.arange(n) % 3,
            "group": np.arange(n) % 4,
        }
    )
    for name in ("train", "validation"):
        pads.write_dataset(
            table,
            tmp_path / name,
            format="parquet",
            partitioning=["group"],
            partitioning_flavor="hive",
        )
    assert len(list((tmp_path / "train").glob("group=*"))) == 4
    dataset = Dataset.from_parquet(
        tmp_path / "train",
        tmp_path / "validation",
        label="y",
        features=["a", "b"],
        memory_bytes=MIB,
    )
    split = dataset.train.to_split()
    ids = split.x[:, 0].astype(np.int64)
    assert sorted(ids.tolist()) == list(range(n))
    np.testing.assert_array_equal(split.x[:, 1], ids * 0.5)
    np.testing.assert_array_equal(split.y, ids % 3)
    groups = ids % 4
    assert (np.diff(groups) >= 0).all()  # file by file, in path order


def test_parquet_fixed_size_list_with_shape(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1200, 1, 28, 28), dtype=np.uint8)
    y = np.arange(len(x)) % 10
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 28 * 28)
    for name, part in (("train", slice(0, 1000)), ("validation", slice(1000, None))):
        pq.write_table(
            pa.table({"pixels": pixels[part], "y": y[part]}), tmp_path / f"{name}.parquet"
        )
    dataset = Dataset.from_parquet(
        tmp_path / "train.parquet",
        tmp_path / "validation.parquet",
        label="y",
        shape=(1, 28, 28),
        memory_bytes=MIB,
    )
    assert dataset.n_features_shape == (1, 28, 28)
    np.testing.assert_array_equal(dataset.train.head(3)[0], x[:3])
    lengths = _count_chunks(monkeypatch)
    infos = write_shards(dataset, 2, tmp_path / "shards", seed=0)
    assert len(lengths) > 2 and max(lengths) < 1000
    _check_dense_shards(infos, "train", x[:1000], y[:1000], seed=0)
    _check_dense_shards(infos, "val", x[1000:], y[1000:], seed=0)


def test_parquet_binary_image_column(fashion, tmp_path) -> None:
    train, _ = fashion
    files = _images(train)[:40]
    data = [f.read_bytes() for f in files]
    labels = np.arange(len(files)) % 10
    for name, part in (("train", slice(0, 30)), ("validation", slice(30, None))):
        table = pa.table({"png": pa.array(data[part], pa.binary()), "label": labels[part]})
        pq.write_table(table, tmp_path / f"{name}.parquet")
    path = str(tmp_path / "train.parquet")
    dataset = Dataset.from_parquet(
        path, tmp_path / "validation.parquet", label="label", image_column="png", memory_bytes=MIB
    )
    x, _ = dataset.train.head(2)
    assert (x.dtype, x.shape) == (np.uint8, (2, 1, 28, 28))
    infos = write_shards(dataset, 2, tmp_path / "shards", seed=0)
    parts = shard_indices(30, 2, 0, salt=0)
    for shard, rows in zip(_shards(infos), parts, strict=True):
        rows = np.sort(rows)
        assert _records(shard.train_x) == [(f"row {r} of {path}", data[r]) for r in rows]
        np.testing.assert_array_equal(shard.train_y, labels[rows])


# -------------------------------------------------------------------- bad data


def test_corrupt_first_image_is_reported_when_the_dataset_is_built(tmp_path) -> None:
    root = _class_folder(tmp_path / "train", {"a": [_grey(1), _grey(2)], "b": [_grey(3)]})
    (root / "a" / "000.png").write_bytes(b"not a png at all")
    validation = _class_folder(tmp_path / "validation", {"a": [_grey(1)], "b": [_grey(3)]})
    with pytest.raises(
        BadRecordError,
        match=r"cannot decode .*000\.png as an image.*"
        r"on_bad_record='skip'",
    ):
        Dataset.from_image_folder(root, validation)
    # Asked to skip bad records, the check reads past it as training will.
    dataset = Dataset.from_image_folder(root, validation, on_bad_record="skip")
    x, y = dataset.train.head(2)
    assert x.shape == (2, 1, 8, 8) and list(y) == [0, 1]  # a/001.png and b/000.png


def test_non_image_file_in_class_folder(tmp_path) -> None:
    root = _class_folder(tmp_path / "train", {"a": [_grey(1)], "b": [_grey(3)]})
    (root / "b" / "notes.txt").write_text("labelled by hand")
    with pytest.raises(
        DataError,
        match=r"notes\.txt' in class folder 'b' is not an image.*"
        r"move it out of the folder",
    ):
        Dataset.from_image_folder(root, fractions=(0.5, 0.5, 0.0))


def test_empty_class_folder(tmp_path) -> None:
    root = _class_folder(tmp_path / "train", {"a": [_grey(1)], "b": [_grey(3)]})
    (root / "c").mkdir()
    with pytest.raises(
        DataError,
        match=r"class folder '.*c' has no images; add images or "
        r"remove the folder",
    ):
        Dataset.from_image_folder(root, fractions=(0.5, 0.5, 0.0))


def test_validation_folder_with_other_classes(tmp_path) -> None:
    root = _class_folder(tmp_path / "train", {"a": [_grey(1)], "b": [_grey(3)]})
    validation = _class_folder(tmp_path / "validation", {"a": [_grey(1)], "c": [_grey(3)]})
    with pytest.raises(
        DataError,
        match=r"the 'validation' split's classes \['a', 'c'\] differ "
        r"from the training split's \['a', 'b'\]",
    ):
        Dataset.from_image_folder(root, validation)


def test_parquet_files_with_different_schemas(tmp_path) -> None:
    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [0, 1]}), tmp_path / "train" / "0.parquet")
    pq.write_table(pa.table({"a": ["x", "y"], "y": [0, 1]}), tmp_path / "train" / "1.parquet")
    with pytest.raises(
        DataError,
        match=r"parquet file '.*1\.parquet' of the 'train' split has "
        r"schema \{a: string, y: int64\} but '.*0\.parquet' has \{a: double",
    ):
        Dataset.from_parquet(tmp_path / "train", tmp_path / "train", label="y")


def test_parquet_missing_label_column(tmp_path) -> None:
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [0, 1]}), path)
    with pytest.raises(
        DataError,
        match=r"label column 'label' not found in the 'train' split; "
        r"its columns are \['a', 'y'\]; pass label= one of them",
    ):
        Dataset.from_parquet(path, path, label="label")


def test_parquet_binary_column_without_image_column(tmp_path) -> None:
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"png": [_png(_grey(1))] * 2, "y": [0, 1]}), path)
    with pytest.raises(
        DataError,
        match=r"column 'png' of the 'train' split holds bytes; if "
        r"they are encoded images pass image_column='png'",
    ):
        Dataset.from_parquet(path, path, label="y")


def test_mixed_image_sizes_name_two_files(tmp_path) -> None:
    root = _class_folder(tmp_path / "train", {"a": [_grey(1, 28), _grey(2, 32)], "b": [_grey(3)]})
    dataset = Dataset.from_image_folder(root, fractions=(0.5, 0.5, 0.0))  # the first decodes
    origins = [str(root / "a" / "000.png"), str(root / "a" / "001.png")]
    source = ImageFolderSource(
        [Path(o) for o in origins], np.zeros(2, np.int64), np.ones(2, np.int64), Codec(), root
    )
    message = (
        r"different shapes in one batch: .*000\.png is \(1, 28, 28\) but .*001\.png is "
        r"\(1, 32, 32\); resize them"
    )
    with pytest.raises(DataError, match=message):
        StreamedSplit(source).head(2)
    examples = [Codec().decode(Path(o).read_bytes(), o) for o in origins]
    with pytest.raises(DataError, match=message):
        stack_examples(examples, origins)
    assert len(dataset.train) + len(dataset.validation) == 3


def _image_parquet(path: Path, records: list[bytes]) -> str:
    pq.write_table(pa.table({"png": pa.array(records, pa.binary()), "y": [0] * len(records)}), path)
    return str(path)


def test_parquet_corrupt_first_image_is_reported_when_the_dataset_is_built(tmp_path) -> None:
    path = _image_parquet(tmp_path / "train.parquet", [b"GIF89a?", _png(_grey(1))])
    with pytest.raises(
        BadRecordError,
        match=r"cannot decode row 0 of .*train\.parquet as an "
        r"image",
    ):
        Dataset.from_parquet(path, path, label="y", image_column="png")


def test_parquet_mixed_image_sizes_name_two_rows(tmp_path) -> None:
    path = _image_parquet(tmp_path / "train.parquet", [_png(_grey(1, 28)), _png(_grey(2, 32))])
    dataset = Dataset.from_parquet(path, path, label="y", image_column="png")
    with pytest.raises(
        DataError,
        match=r"row 0 of .*train\.parquet is \(1, 28, 28\) but row 1 "
        r"of .*train\.parquet is \(1, 32, 32\)",
    ):
        dataset.train.head(2)


@pytest.fixture
def encoded_with_bad_record(tmp_path):
    """An Arrow file of three records, the middle one not an image."""

    def column(on_bad_record: str) -> EncodedColumn:
        path = tmp_path / f"{on_bad_record}.arrow"
        writer = EncodedWriter(path)
        writer.append(
            [_png(_grey(1)), b"\x89PNG garbage", _png(_grey(3))],
            ["a/0.png", "a/broken.png", "b/2.png"],
        )
        writer.close()
        return EncodedColumn(path, Codec(on_bad_record=on_bad_record))

    return column


def test_decode_raises_on_a_bad_record_naming_it(encoded_with_bad_record) -> None:
    column = encoded_with_bad_record("raise")
    assert column.decode([0, 2])[1] == [0, 1]
    with pytest.raises(BadRecordError, match=r"cannot decode a/broken\.png as an image"):
        column.decode([0, 1, 2])


def test_decode_skips_a_bad_record_when_asked(encoded_with_bad_record) -> None:
    examples, kept = encoded_with_bad_record("skip").decode([2, 1, 0])
    assert kept == [0, 2]
    assert [int(e[0, 0, 0]) for e in examples] == [3, 1]


def test_skip_reaches_the_shards(tmp_path) -> None:
    root = _class_folder(tmp_path / "train", {"a": [_grey(1), _grey(2)], "b": [_grey(3)] * 3})
    (root / "b" / "001.png").write_bytes(b"truncated")
    dataset = Dataset.from_image_folder(root, fractions=(0.8, 0.2, 0.0), on_bad_record="skip")
    infos = write_shards(dataset, 1, tmp_path / "shards", seed=0)
    column = open_shard(infos[0].path).train_x
    assert column.codec == Codec(on_bad_record="skip")
    examples, kept = column.decode(range(len(column)))
    assert len(kept) == len(column) - 1 == len(examples)


# -------------------------------------------------------------------- Hugging Face


@pytest.fixture
def offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_from_huggingface_keeps_images_encoded(fashion, tmp_path, offline) -> None:
    train, _ = fashion
    files = _images(train)[:24]
    names = sorted(p.name for p in train.iterdir())
    labels = [names.index(f.parent.name) for f in files]
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=names)})
    rows = {"image": [{"bytes": f.read_bytes(), "path": None} for f in files], "label": labels}
    data = hf.Dataset.from_dict(rows, features=features)
    splits = hf.DatasetDict(
        {"train": data.select(range(16)), "validation": data.select(range(16, 24))}
    )
    dataset = Dataset.from_huggingface(splits, label="label", memory_bytes=MIB)
    assert dataset.classes == tuple(names)
    assert dataset.train.encoded and dataset.train.y.tolist() == labels[:16]
    infos = write_shards(dataset, 2, tmp_path / "shards", seed=0)
    for prefix, offset, n in (("train", 0, 16), ("val", 16, 8)):
        parts = shard_indices(n, 2, 0, salt=0 if prefix == "train" else 1)
        for shard, rows in zip(_shards(infos), parts, strict=True):
            rows = np.sort(rows)
            column = getattr(shard, f"{prefix}_x")
            assert [bytes(column.record(i)) for i in range(len(column))] == [
                files[offset + r].read_bytes() for r in rows
            ]
            np.testing.assert_array_equal(
                getattr(shard, f"{prefix}_y"), np.asarray(labels)[offset + rows]
            )
    examples, _ = open_shard(infos[0].path).train_x.decode([0])
    assert (examples[0].dtype, examples[0].shape) == (np.uint8, (1, 28, 28))


def test_from_huggingface_numeric_columns(tmp_path, offline) -> None:
    rng = np.random.default_rng(0)
    a, b, y = rng.normal(size=40), rng.integers(0, 9, size=40), np.arange(40) % 2
    data = hf.Dataset.from_dict({"a": a, "b": b, "y": y})
    dataset = Dataset.from_huggingface(
        (data.select(range(30)), data.select(range(30, 40))), label="y", memory_bytes=MIB
    )
    assert not dataset.train.encoded and dataset.classes is None
    x = np.stack([a, b], axis=1).astype(np.float32)
    infos = write_shards(dataset, 2, tmp_path / "shards", seed=5)
    _check_dense_shards(infos, "train", x[:30], y[:30], seed=5)
    _check_dense_shards(infos, "val", x[30:], y[30:], seed=5)


def test_from_huggingface_without_validation_split(offline) -> None:
    data = hf.Dataset.from_dict({"a": [1.0, 2.0], "y": [0, 1]})
    with pytest.raises(
        DataError,
        match=r"has no split 'validation'; its splits are \['train'\]; "
        r"pass splits=.*train_test_split",
    ):
        Dataset.from_huggingface(hf.DatasetDict({"train": data}), label="y")


# -------------------------------------------------------------------------- torch


class _CountingDataset(torch.utils.data.Dataset):
    """A map-style dataset that counts how often each item is read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.reads = np.zeros(len(x), dtype=np.int64)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            self.reads[index] += 1
        return self.x[index], self.y[index]


def test_from_torch_streams_each_item_once(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(900, 1, 28, 28, generator=generator)  # 2.7 MiB: several chunks of 1 MiB
    y = torch.arange(900) % 10
    train, validation = _CountingDataset(x[:800], y[:800]), _CountingDataset(x[800:], y[800:])
    dataset = Dataset.from_torch(train, validation, memory_bytes=MIB)
    assert isinstance(dataset.train, StreamedSplit) and not dataset.train.encoded
    assert train.reads[:2].tolist() == [1, 1] and train.reads[2:].sum() == 0
    infos = write_shards(dataset, 3, tmp_path / "shards", seed=0)
    np.testing.assert_array_equal(train.reads, [2, 2] + [1] * 798)
    np.testing.assert_array_equal(validation.reads, [2, 2] + [1] * 98)
    _check_dense_shards(infos, "train", x[:800].numpy(), y[:800].numpy(), seed=0)
    _check_dense_shards(infos, "val", x[800:].numpy(), y[800:].numpy(), seed=0)
