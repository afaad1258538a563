"""Data at scale: sharding an image folder, the input pipeline, and MOP on image files.

    python bench/data_scale.py                # full size (the 2 GB folder: ~10 min, once)
    python bench/data_scale.py --smoke-test   # tiny sizes in a temp folder, for CI

Three figures, each a ratio of two timings taken in this one run:

a. Sharding a >= 2 GB image folder (Fashion-MNIST upscaled to 224x224 RGB JPEGs,
   each copy a distinct random crop, colour jitter, flip and noise; built once
   under bench/.cache/ by 2 processes): ``Dataset.from_image_folder`` +
   ``write_shards`` into 2 shards, against ``shutil.copytree`` of the same folder.
   Both run after the folder was read once (page cache warm). The driver's RSS is
   sampled every 10 ms by a thread: peak minus the baseline, and the absolute peak.
b. Input pipeline, one process: images/s of decode + random crop/flip through
   modelhopper's loader (``_loader.batches`` over a shard's ``EncodedColumn``)
   against a plain ``torch.utils.data.DataLoader`` over the same image files
   (``PIL.Image.open`` + the same transform), same batches, num_workers 0 and 2.
c. MOP on an image folder with augmentation: 8 small CNNs on 28x28 grey PNG
   files, 2 workers: the whole ``GridSearch.fit`` call (sharding included)
   against the same 8 trainings in a plain single-threaded PyTorch loop with a
   plain DataLoader over the same files, divided by the 2 workers.

Writes bench/results/data_scale.json and .md (``--out`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from torch import nn

import modelhopper as mh
from modelhopper._loader import batches
from modelhopper.data._datasets import FASHION_MNIST_CLASSES, _find_fashion_files, _load_pair
from modelhopper.data._sharding import open_shard, write_shards
from modelhopper.estimator import denormals_flushed

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"
N_WORKERS = 2
TARGETS = {"shard_over_copy": 1.5, "peak_rss_mb": 512, "loader_ratio": 0.95, "mop_ratio": 0.93}


# -- a. the big image folder, built once ----------------------------------------------------------
_IMAGES: tuple[np.ndarray, np.ndarray] | None = None


def _load_fashion() -> None:
    global _IMAGES
    paths = _find_fashion_files(None)
    _IMAGES = _load_pair(paths["train_images"], paths["train_labels"])


def _write_images(root: str, start: int, count: int, size: int) -> int:
    """Images ``start .. start+count`` (each a distinct augmented copy); returns bytes written."""
    assert _IMAGES is not None
    images, labels = _IMAGES
    written = 0
    for i in range(start, start + count):
        rng = np.random.default_rng([7, i])
        grey = Image.fromarray(images[i % len(images)])
        scale = rng.uniform(0.6, 1.0)  # a random crop of 60-100% of the side, then 224x224
        side = max(8, round(28 * scale))
        left, top = (int(v) for v in rng.integers(0, 28 - side + 1, size=2))
        image = grey.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32)[..., None]
        gains = rng.uniform(0.6, 1.4) * rng.uniform(0.7, 1.3, size=3)  # brightness, tint
        contrast = rng.uniform(0.7, 1.3)
        rgb = (pixels - pixels.mean()) * contrast + pixels.mean()
        rgb = rgb * gains + rng.normal(0, 6, size=(size, size, 3))  # and sensor-like noise
        if rng.random() < 0.5:
            rgb = rgb[:, ::-1]
        buffer = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        path = Path(root) / FASHION_MNIST_CLASSES[int(labels[i % len(labels)])] / f"{i:07d}.jpg"
        path.write_bytes(buffer.getvalue())
        written += buffer.tell()
    return written


def build_folder(root: Path, target_bytes: int, size: int = 224, per_task: int = 500) -> dict:
    """Write augmented copies until they total ``target_bytes``; reused when already complete."""
    done = root / "complete.json"
    if done.exists():
        meta = json.loads(done.read_text())
        if meta["target_bytes"] == target_bytes and meta["size"] == size:
            return meta
    for name in FASHION_MNIST_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    started, total, n_images, window = time.perf_counter(), 0, 0, 2 * N_WORKERS
    pool = concurrent.futures.ProcessPoolExecutor(N_WORKERS, initializer=_load_fashion)
    with pool:
        while total < target_bytes:  # whole windows of tasks: the same files every time
            starts = [n_images + k * per_task for k in range(window)]
            futures = [pool.submit(_write_images, str(root), s, per_task, size) for s in starts]
            total += sum(f.result() for f in futures)
            n_images += window * per_task
    meta = {"target_bytes": target_bytes, "size": size, "n_images": n_images, "bytes": total,
            "build_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    done.write_text(json.dumps(meta))
    return meta


def read_once(root: Path) -> int:
    """Read every file under ``root`` (fills the page cache); returns the bytes read."""
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                while chunk := f.read(2**20):
                    total += len(chunk)
    return total


class PeakRSS:
    """This process's RSS, sampled by a thread every ``interval`` seconds: baseline and peak."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval, self._process = interval, psutil.Process()
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def sharding(root: Path, work: Path) -> tuple[dict, Path]:
    """Copy the folder, then shard it, each after a warm read; returns the row and the shards."""
    folder_bytes = read_once(root)
    started = time.perf_counter()
    shutil.copytree(root, work / "copy")
    copy_seconds = time.perf_counter() - started
    shutil.rmtree(work / "copy")
    read_once(root)
    with PeakRSS() as rss:
        started = time.perf_counter()
        data = mh.Dataset.from_image_folder(root, fractions=(0.9, 0.1, 0.0), seed=0, mode="RGB")
        scanned = time.perf_counter()
        infos = write_shards(data, N_WORKERS, work / "shards", seed=0)
        finished = time.perf_counter()
    shard_bytes = sum(f.stat().st_size for f in (work / "shards").rglob("*") if f.is_file())
    total_seconds = finished - started
    row = {
        "n_images": len(data.train) + len(data.validation),
        "folder_bytes": folder_bytes,
        "shard_bytes": shard_bytes,
        "copy_seconds": round(copy_seconds, 2),
        "scan_seconds": round(scanned - started, 2),
        "write_shards_seconds": round(finished - scanned, 2),
        "shard_seconds": round(total_seconds, 2),
        "shard_over_copy": round(total_seconds / copy_seconds, 3),
        "write_shards_over_copy": round((finished - scanned) / copy_seconds, 3),
        "baseline_rss_mb": round(rss.baseline / 2**20, 1),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "peak_over_baseline_mb": round((rss.peak - rss.baseline) / 2**20, 1),
        "n_train_per_shard": [i.n_train for i in infos],
    }
    return row, work / "shards" / "shard-0"


# -- b. the input pipeline, one process ---------------------------------------------------------
def crop_flip(image: torch.Tensor, pad: int = 8) -> torch.Tensor:
    """A uint8 C x H x W image: a random H x W crop of it zero-padded by ``pad``, flipped or not."""
    _, height, width = image.shape
    padded = nn.functional.pad(image, (pad, pad, pad, pad))
    top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    image = padded[:, top : top + height, left : left + width]
    return image.flip(-1) if torch.rand(()) < 0.5 else image


class ImageFiles(torch.utils.data.Dataset):
    """What a plain PyTorch user writes: open each file with PIL, to a tensor, transform it."""

    def __init__(self, files: list[str], labels: np.ndarray, mode: str, transform) -> None:
        self.files, self.labels, self.mode, self.transform = files, labels, mode, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as image:
            array = np.array(image.convert(self.mode))
        x = torch.from_numpy(array)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        return self.transform(x), int(self.labels[i])


def _images_per_second(make_batches) -> float:
    started, n = time.perf_counter(), 0
    for x, _ in make_batches():
        n += len(x)
    return n / (time.perf_counter() - started)


def pipeline(shard: Path, n_images: int, batch_size: int, repeats: int) -> list[dict]:
    """modelhopper's loader against a plain DataLoader on the same files, same batches."""
    opened = open_shard(shard)
    column, labels = opened.train_x, opened.train_y
    n = min(n_images, len(column))
    files = [column.origin(r) for r in range(n)]
    order = np.random.default_rng(0).permutation(n)
    indices = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    seeds = list(range(len(indices)))
    transform = mh.per_example(crop_flip)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for num_workers in (0, 2):

        def ours(num_workers=num_workers):
            for b in batches(column, labels, indices, stage=None, transform=transform,
                             seeds=seeds, num_workers=num_workers):  # fmt: skip
                yield b.x, b.y

        def plain(num_workers=num_workers):
            dataset = ImageFiles(files, np.asarray(labels[:n]), column.codec.mode, crop_flip)
            return torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, sampler=order.tolist(), num_workers=num_workers
            )

        read_once(shard)
        for file in files:
            Path(file).read_bytes()
        best_ours = best_plain = 0.0
        for _ in range(repeats):  # alternated, best of each: the machine is shared
            best_ours = max(best_ours, _images_per_second(ours))
            best_plain = max(best_plain, _images_per_second(plain))
        rows.append({
            "num_workers": num_workers, "n_images": n, "batch_size": batch_size,
            "modelhopper_images_per_second": round(best_ours, 1),
            "dataloader_images_per_second": round(best_plain, 1),
            "ratio": round(best_ours / best_plain, 3),
        })  # fmt: skip
    torch.set_num_threads(threads)
    return rows


# -- c. MOP on an image folder, with augmentation -----------------------------------------------
def to_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div_(255)


def augment(image: torch.Tensor) -> torch.Tensor:
    return to_float(crop_flip(image, pad=2))


SPACE = {"lr": mh.grid([1e-3, 3e-3]), "batch_size": mh.grid([64, 128]), "l2": mh.grid([0, 1e-4])}


def cnn(p):
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["l2"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=p["batch_size"],
        train_transform=mh.per_example(augment),
        eval_transform=to_float,
    )


def plain_loop(search, data: mh.Dataset, msts: list[tuple[dict, int]]) -> tuple[float, list]:
    """Each MST alone, one after another, single-threaded, a plain DataLoader over the files."""
    train, val = data.train.source, data.validation.source
    train_set = ImageFiles([str(f) for f in train.files], train.labels, "L", augment)
    val_set = ImageFiles([str(f) for f in val.files], val.labels, "L", to_float)
    accuracies = []
    started = time.perf_counter()
    for params, seed in msts:
        torch.manual_seed(seed)
        estimator = search.make_estimator(params)
        model, optimizer, loss_fn = estimator.model, estimator.optimizer, estimator.loss
        generator = torch.Generator().manual_seed(seed)
        train_loader = torch.utils.data.DataLoader(
            train_set, batch_size=estimator.batch_size, shuffle=True, generator=generator
        )
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=max(256, estimator.batch_size))
        for _ in range(search.epochs):
            model.train()
            for x, y in train_loader:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val_loader)
        accuracies.append(correct / len(val_set))
    return time.perf_counter() - started, accuracies


def mop(root: Path, epochs: int) -> dict:
    data = mh.Dataset.from_image_folder(root, fractions=(0.8, 0.2, 0.0), seed=0, mode="L")
    search = mh.GridSearch(cnn, SPACE, epochs=epochs, metric="val_accuracy",
                           direction="maximize", seed=0)  # fmt: skip
    read_once(root)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        result = search.fit(data, n_workers=N_WORKERS, run_dir=run_dir,
                            store=f"sqlite:///{run_dir}/runs.db")  # fmt: skip
        fit_seconds = time.perf_counter() - started
    msts = [(m.params, m.seed) for m in result.msts]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with denormals_flushed():  # the same numerics as the workers
        plain_seconds, plain_acc = plain_loop(search, data, msts)
    torch.set_num_threads(threads)
    limit = plain_seconds / N_WORKERS
    return {
        "n_msts": len(msts), "epochs": epochs,
        "n_train": len(data.train), "n_val": len(data.validation),
        "plain_loop_seconds": round(plain_seconds, 2),
        "limit_seconds": round(limit, 2),
        "fit_seconds": round(fit_seconds, 2),
        "ratio": round(limit / fit_seconds, 3),
        "startup_seconds": round(result.stats.startup_seconds, 2),
        "in_run_efficiency": round(result.stats.efficiency, 3),
        "mean_val_accuracy_plain": round(float(np.mean(plain_acc)), 4),
        "mean_val_accuracy_mop": round(
            float(np.mean([m.metrics["val_accuracy"] for m in result.msts])), 4
        ),
    }  # fmt: skip


# -- the report --------------------------------------------------------------------------------
def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _markdown(data: dict) -> str:
    meta, a, c = data["meta"], data["sharding"], data["mop"]
    t = TARGETS
    lines = [
        "# Data at scale: sharding an image folder, the input pipeline, MOP on image files",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}; load average "
        f"{meta['load_average']} at the start. Each figure is a ratio of two timings from "
        "this one run (`python bench/data_scale.py`).",
        "",
        f"## a. Sharding a {a['folder_bytes'] / 1e9:.2f} GB image folder "
        f"({a['n_images']:,} JPEGs, 224x224 RGB)",
        "",
        "`Dataset.from_image_folder(root, fractions=(0.9, 0.1, 0.0))` then `write_shards` "
        "into 2 shards, against `shutil.copytree` of the same folder to the same disk. "
        "Both ran after the folder was read once (page cache warm, so neither pays for "
        "the first read from disk); neither syncs its writes. RSS of the driver sampled "
        "every 10 ms by a thread.",
        "",
        "| copy s | scan s | write_shards s | shard / copy (target) | peak RSS MB (target) "
        "| peak - baseline MB | shard GB |",
        "|---|---|---|---|---|---|---|",
        f"| {a['copy_seconds']} | {a['scan_seconds']} | {a['write_shards_seconds']} | "
        f"{a['shard_over_copy']} (<= {t['shard_over_copy']}: "
        f"{_met(a['shard_over_copy'] <= t['shard_over_copy'])}) | {a['peak_rss_mb']} "
        f"(<= {t['peak_rss_mb']}: {_met(a['peak_rss_mb'] <= t['peak_rss_mb'])}) | "
        f"{a['peak_over_baseline_mb']} | {a['shard_bytes'] / 1e9:.2f} |",
        "",
        "shard / copy counts the scan (listing the folder, as `copytree` does) and "
        f"`write_shards`; `write_shards` alone: {a['write_shards_over_copy']}. The baseline "
        f"({a['baseline_rss_mb']} MB) is the process with torch and modelhopper imported.",
        "",
        "## b. Input pipeline: decode + random crop/flip, images per second",
        "",
        "modelhopper's loader (`_loader.batches` over a shard's Arrow `EncodedColumn`, "
        "`per_example(crop_flip)`, seeded per batch) against a plain `DataLoader` over the "
        "same JPEG files (a Dataset doing `PIL.Image.open` + the same transform), same "
        "batches in the same order; best of the alternated repeats.",
        "",
        "| num_workers | images | modelhopper img/s | DataLoader img/s | ratio (target) |",
        "|---|---|---|---|---|",
    ]
    for r in data["pipeline"]:
        lines.append(
            f"| {r['num_workers']} | {r['n_images']} | {r['modelhopper_images_per_second']} | "
            f"{r['dataloader_images_per_second']} | {r['ratio']} (>= {t['loader_ratio']}: "
            f"{_met(r['ratio'] >= t['loader_ratio'])}) |"
        )
    lines += [
        "",
        f"## c. MOP on an image folder with augmentation ({c['n_train']:,} / {c['n_val']:,} "
        "28x28 grey PNGs)",
        "",
        f"{c['n_msts']} small CNNs (conv16-conv32-fc64; lr x batch size x L2) x {c['epochs']} "
        "epochs, random crop/flip per image, 2 workers. The whole `GridSearch.fit` call "
        "(sharding and start-up included) against the same trainings one after another in "
        "a plain single-threaded loop with a plain `DataLoader` over the same files; "
        "ratio = (plain loop / 2 workers) / fit.",
        "",
        "| plain loop s | limit s | fit s | ratio (target) | start-up s | in-run efficiency "
        "| mean val acc plain / MOP |",
        "|---|---|---|---|---|---|---|",
        f"| {c['plain_loop_seconds']} | {c['limit_seconds']} | {c['fit_seconds']} | "
        f"{c['ratio']} (>= {t['mop_ratio']}: {_met(c['ratio'] >= t['mop_ratio'])}) | "
        f"{c['startup_seconds']} | {c['in_run_efficiency']} | "
        f"{c['mean_val_accuracy_plain']} / {c['mean_val_accuracy_mop']} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, help="default bench/results (a temp folder if smoke)")
    parser.add_argument("--gigabytes", type=float, default=2.0, help="size of the image folder")
    args = parser.parse_args()
    smoke = args.smoke_test
    with tempfile.TemporaryDirectory(prefix="data_scale-") as tmp:
        work = Path(tmp)
        cache = work / "cache" if smoke else CACHE
        target = 4 * 10**6 if smoke else int(args.gigabytes * 1e9)
        started = time.perf_counter()
        meta = {
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "load_average": round(os.getloadavg()[0], 2),
            "smoke_test": smoke,
        }
        jpeg_root = cache / f"fashion-mnist-jpeg224-{target}"
        meta["folder"] = build_folder(jpeg_root, target, per_task=50 if smoke else 500)
        row_a, shard = sharding(jpeg_root, work)
        rows_b = pipeline(shard, 256 if smoke else 4000, 32 if smoke else 64, 1 if smoke else 3)
        png_root = mh.datasets.fashion_mnist_folder(
            cache / f"fashion-mnist-png-{600 if smoke else 16_000}", limit=600 if smoke else 16_000
        )
        row_c = mop(png_root, 1 if smoke else 2)
        meta["seconds"] = round(time.perf_counter() - started, 1)
    data = {"meta": meta, "targets": TARGETS, "sharding": row_a, "pipeline": rows_b, "mop": row_c}
    out = args.out or (Path(tempfile.mkdtemp(prefix="data_scale-")) if smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if smoke else ""
    (out / f"data_scale{suffix}.json").write_text(json.dumps(data, indent=2))
    (out / f"data_scale{suffix}.md").write_text(_markdown(data))
    print(_markdown(data))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
