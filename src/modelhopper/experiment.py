"""Runs: start one (``run_search``), continue one after a crash (``resume``), read one back.

A run lives in two places: its metadata in the store (SQLite file under
``./modelhopper-runs/`` by default, or any SQLAlchemy URL) and its files in the
run directory (shards, checkpoints, the pickled procedure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

import cloudpickle
import numpy as np
from torch import nn

from modelhopper._checks import check_int
from modelhopper._driver import DECISION_MARKERS, Driver
from modelhopper._preflight import first_msts, preflight
from modelhopper._procedure_file import dump_procedure, load_procedure, write_procedure
from modelhopper._vocabulary import MST, MSTStatus, Procedure, RunStats
from modelhopper.data import Dataset
from modelhopper.data._dataset import check_label_range
from modelhopper.data._sharding import ShardInfo, read_shard_info, write_shards
from modelhopper.data._streaming import StreamedSplit
from modelhopper.errors import AllMSTsFailedError, ConfigError, ExecutorError, StoreError
from modelhopper.executors import BaseExecutor, resolve_executor
from modelhopper.provenance import collect_provenance
from modelhopper.result import MSTResult, Result
from modelhopper.scheduling import check_n_shards
from modelhopper.store import (
    DEFAULT_ROOT,
    BaseStore,
    EventKind,
    ExperimentRecord,
    RunStatus,
    open_store,
)
from modelhopper.store._checkpoints import CheckpointManager, Retention

__all__ = [
    "run_search",
    "resume",
    "load_result",
    "load_model",
    "check_run_name",
    "DEFAULT_ROOT",
    "RUN_NAME_MAX",
    "RunOptions",
    "check_options",
]


class RunOptions(TypedDict, total=False):
    """The options of a run: keywords of ``fit``, ``start`` and ``run_search`` alike."""

    n_workers: int
    n_shards: int | None
    executor: BaseExecutor | str | None
    run_name: str | None
    store: str | BaseStore | None
    run_dir: str | os.PathLike[str] | None
    progress: bool
    keep_shards: bool
    checkpoints: Retention | str


def check_options(options: RunOptions, caller: str) -> RunOptions:
    """``options`` if every key is a run option (checked before anything starts), with a
    valid ``run_name``; else a ConfigError naming the unknown key and the known ones."""
    known = RunOptions.__annotations__
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"{caller}() got unknown option(s) {unknown}; its options are {sorted(known)}"
        )
    if options.get("run_name") is not None:
        check_run_name(options["run_name"])  # type: ignore[arg-type]
    return options


# -- checks before any worker starts -------------------------------------------
def _check_arguments(data: Any, n_workers: Any, n_shards: Any, executor: Any) -> int:
    """The number of shards to cut the data into, once the arguments are checked."""
    if not isinstance(data, Dataset):
        raise ConfigError(
            f"data must be a modelhopper.Dataset, got {type(data).__name__}; build one with "
            "Dataset.from_numpy / from_pandas / from_parquet / from_image_folder / from_torch"
        )
    check_int("n_workers", n_workers, example="n_workers=2")
    shards = check_n_shards(n_shards, n_workers)
    for split, name in ((data.train, "training"), (data.validation, "validation")):
        if len(split) < shards:
            what = "n_workers" if n_shards is None else "n_shards"
            raise ConfigError(
                f"{what}={shards} is more than the {len(split)} {name} examples; "
                f"every shard needs at least one: use {what} <= {len(split)}"
            )
    if executor is not None and not isinstance(executor, BaseExecutor | str):
        raise ConfigError(
            f"executor must be 'local', 'ray' or a BaseExecutor, got {type(executor).__name__}"
        )
    return shards


def _probe(procedure: Procedure, first: list[MST], data: Dataset) -> int | None:
    """The first MSTs train one batch of two training examples before any worker starts.

    Raises if the metric is unknown, a label is outside the model's classes, or every
    MST of ``first`` fails (see ``_preflight``). Returns the model's number of classes
    when it could tell (for the labels of streamed splits, checked once sharding has
    read them).
    """
    return preflight(procedure, first, _head(data.train), data.check_labels)


def _head(split: Any) -> tuple[np.ndarray, np.ndarray]:
    """The first two examples of a split (decoded, for a streamed one) and their labels."""
    if isinstance(split, StreamedSplit):
        return split.head(2)
    return split.x[:2], split.y[:2]


def _check_shard_labels(shards: list[ShardInfo], num_classes: int) -> None:
    """Labels of streamed splits, known once sharding has read them, against the model."""
    for info in shards:  # from the ranges sharding noted: the files may be on another node
        for prefix, name in (("train", "training"), ("val", "validation")):
            if (labels := (info.labels or {}).get(prefix)) is not None:
                check_label_range(np.asarray(labels), num_classes, f"{name} (shard {info.index})")


def new_run_name(procedure: Procedure) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{type(procedure).__name__.lower()}-{stamp}-{uuid.uuid4().hex[:6]}"


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RUN_NAME_MAX = 100


def check_run_name(name: Any) -> str:
    """A run's name names its folder and its URLs: plain characters only."""
    if (
        not isinstance(name, str)
        or not _RUN_NAME.fullmatch(name)
        or ".." in name
        or len(name) > RUN_NAME_MAX
    ):
        raise ConfigError(
            f"run_name must be 1 to {RUN_NAME_MAX} letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (no '/', spaces or '..'), got {name!r}; "
            "e.g. run_name='digits-grid', or leave it out for a generated name"
        )
    return name


# -- starting, continuing and finishing runs ------------------------------------
def run_search(
    procedure: Procedure,
    data: Dataset,
    *,
    n_workers: int = 2,
    n_shards: int | None = None,
    executor: BaseExecutor | str | None = None,
    run_name: str | None = None,
    store: str | BaseStore | None = None,
    run_dir: str | os.PathLike | None = None,
    progress: bool = False,
    keep_shards: bool = False,
    checkpoints: Retention | str = Retention.LATEST_AND_BEST,
) -> Result:
    """Check the inputs and train one batch through the first MSTs (``_preflight``), then
    record a new run in the store, shard the data, and train the procedure's MSTs on MOP.

    ``n_shards`` (default: one per worker) cuts the data into more shards than workers,
    each worker owning ``n_shards / n_workers`` of them: the results then do not depend
    on ``n_workers`` (an epoch still trains on every shard once, in the same order)."""
    n_shards = _check_arguments(data, n_workers, n_shards, executor)
    name = new_run_name(procedure) if run_name is None else check_run_name(run_name)
    executor = resolve_executor(executor)
    executor.check_layout(n_workers, n_shards)
    executor.check_hybrid(getattr(procedure, "hybrid", "off"))
    executor.prepare(n_workers)  # workers that take long to start begin now, beside sharding
    retention = CheckpointManager(".", checkpoints).retention  # validates the value
    saved, modules = dump_procedure(procedure)  # what resume needs, from any folder
    num_classes = _probe(procedure, first_msts(procedure, _copy(saved, procedure), n_workers), data)
    db = store if isinstance(store, BaseStore) else open_store(store, root=DEFAULT_ROOT)
    _checknew_run_name(db, name)
    directory = Path(run_dir if run_dir is not None else DEFAULT_ROOT / name).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    write_procedure(directory, saved, modules)
    digest = hashlib.sha256()  # the shards' fingerprint, computed while they are written
    shards = write_shards(
        data, n_shards, directory / "shards", procedure.seed, digest=digest,
        builder=executor.build_shards,
    )  # fmt: skip
    if num_classes is not None and data.streamed:
        _check_shard_labels(shards, num_classes)
    provenance = collect_provenance(
        seed=procedure.seed, n_workers=n_workers, shard_paths=[s.path for s in shards],
        executor=type(executor).__name__, data_sha256=digest.hexdigest(),
    )  # fmt: skip
    settings = {
        **procedure.settings(), "keep_shards": keep_shards, "checkpoints": retention.value,
        DECISION_MARKERS: True, "n_shards": n_shards,
    }  # fmt: skip
    db.create_experiment(
        ExperimentRecord(
            name=name, status=RunStatus.RUNNING, procedure=type(procedure).__name__,
            spec=settings, space=procedure.space.to_dict(), seed=procedure.seed,
            n_workers=n_workers, run_dir=str(directory), provenance=provenance,
        )
    )  # fmt: skip
    driver = _driver(
        name, procedure, executor, db, directory, n_workers, retention, progress, shards
    )
    with db.batch():  # the first MSTs in one transaction
        procedure.on_start(driver)
    if not driver.msts():
        db.set_experiment_status(name, RunStatus.FAILED)
        raise ConfigError("the procedure proposed no MSTs; check the space and n_msts")
    detail = {"n_msts": len(driver.msts()), "shard_bytes": [s.nbytes for s in shards]}
    db.add_event(name, EventKind.STARTED, detail=detail)  # shard bytes: for the dashboard
    return _execute(driver, procedure, executor, db, name, shards, directory, keep_shards)


def _copy(saved: bytes, procedure: Procedure) -> Procedure | None:
    """A fresh copy of the saved procedure (the pre-flight check starts it), if it loads."""
    try:
        copied = cloudpickle.loads(saved)
    except Exception:
        return None
    return copied if isinstance(copied, type(procedure)) else None


def _checknew_run_name(store: BaseStore, name: str) -> None:
    try:
        store.get_experiment(name)
    except StoreError:
        return
    raise ConfigError(
        f"a run named {name!r} already exists in the store; pick another run_name, "
        f"or continue it with `modelhopper resume {name}` / mh.resume({name!r})"
    )


def _driver(
    name: str,
    procedure: Procedure,
    executor: BaseExecutor,
    store: BaseStore,
    directory: Path,
    n_workers: int,
    retention: Retention | str,
    progress: bool,
    shards: Sequence[ShardInfo],
) -> Driver:
    return Driver(
        name=name, procedure=procedure, executor=executor, store=store,
        checkpoints=CheckpointManager(directory / "checkpoints", retention),
        n_workers=n_workers, progress=progress, n_shards=len(shards),
        holdings=executor.holdings(shards, n_workers),
    )  # fmt: skip


@contextlib.contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """Keep the garbage collector off the objects that existed before the run.

    The process holds torch, SQLAlchemy and the user's objects (millions); a full
    collection scans them all, ~0.25 s here, and one falls inside a short run every
    few runs. Frozen objects are set aside (``gc.freeze``) and given back afterwards
    (``gc.unfreeze``), so what becomes garbage meanwhile is still collected later."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _execute(
    driver: Driver,
    procedure: Procedure,
    executor: BaseExecutor,
    store: BaseStore,
    name: str,
    shards: list[ShardInfo],
    directory: Path,
    keep_shards: bool,
) -> Result:
    """Start the workers, run the loop, record how the run ended."""
    started = time.perf_counter()
    try:
        with executor, _old_objects_frozen():
            executor.start(shards, procedure.make_estimator, n_workers=driver.n_workers)
            startup = time.perf_counter() - started
            stats = driver.run()
            if not keep_shards:
                executor.release_shards()
    except (AllMSTsFailedError, ExecutorError) as e:
        store.set_experiment_status(name, RunStatus.FAILED)
        store.add_event(name, EventKind.FAILED, detail={"error": str(e)})
        raise
    stats = dataclasses.replace(
        stats,
        total_seconds=time.perf_counter() - started,
        dataset_bytes=sum(s.nbytes for s in shards),
        startup_seconds=startup,
    )
    store.set_experiment_status(name, RunStatus.COMPLETED)
    store.add_event(name, EventKind.COMPLETED, detail=dataclasses.asdict(stats))
    if not keep_shards:
        shutil.rmtree(directory / "shards", ignore_errors=True)
    return load_result(name, store=store, stats=stats)


def resume(
    run_name: str,
    *,
    store: str | BaseStore | None = None,
    executor: BaseExecutor | str | None = None,
    progress: bool = False,
    n_workers: int | None = None,
) -> Result:
    """Continue a run whose driver stopped (crash, kill, Ctrl-C) from its store and checkpoints.

    Finishes with the same per-MST results as an uninterrupted run with the same seed
    (with ``train_order="any"``, each epoch goes on with the shards not yet trained on).
    ``n_workers`` (default: as many as it had) may be any number up to the run's shards:
    the plan does not depend on it (logical shards: ``fit(..., n_shards=...)``).
    """
    db = store if isinstance(store, BaseStore) else open_store(store, root=DEFAULT_ROOT)
    record = db.get_experiment(run_name)
    if record.status is RunStatus.COMPLETED:
        return load_result(run_name, store=db)
    directory = Path(record.run_dir)
    # Runs recorded before logical shards have one shard per worker.
    n_shards = int(record.spec.get("n_shards", record.n_workers))
    workers = _resume_workers(n_workers, record.n_workers, n_shards)
    executor = resolve_executor(executor)
    executor.check_layout(workers, n_shards)
    procedure = _load_procedure(directory)
    executor.check_hybrid(getattr(procedure, "hybrid", "off"))
    shards = _load_shards(directory, n_shards)
    db.set_experiment_status(run_name, RunStatus.RUNNING)
    db.add_event(run_name, EventKind.RESUMED, detail={"n_workers": workers})
    executor.prepare(workers)
    driver = _driver(
        run_name, procedure, executor, db, directory, workers,
        record.spec.get("checkpoints", Retention.LATEST_AND_BEST), progress, shards,
    )  # fmt: skip
    driver.restore(db.list_msts(run_name))
    procedure.on_start(driver)  # procedures rebuild what they need from the trainer
    if record.spec.get(DECISION_MARKERS):
        driver.decide_undecided()  # epochs committed just before the driver died
    keep_shards = bool(record.spec.get("keep_shards"))
    return _execute(driver, procedure, executor, db, run_name, shards, directory, keep_shards)


def _resume_workers(n_workers: int | None, recorded: int, n_shards: int) -> int:
    if n_workers is None:
        return recorded
    check_int("n_workers", n_workers, example=f"n_workers={recorded}")
    if n_workers > n_shards:
        raise ConfigError(
            f"n_workers={n_workers} is more than this run's {n_shards} shards; resume it on "
            f"at most {n_shards} workers (a run started with fit(..., n_shards=N) can use N)"
        )
    return n_workers


def _load_procedure(directory: Path) -> Procedure:
    procedure: Procedure = load_procedure(directory)
    return procedure


def _load_shards(directory: Path, n_shards: int) -> list[ShardInfo]:
    infos = []
    for index in range(n_shards):
        path = directory / "shards" / f"shard-{index}" / "shard.json"
        try:
            infos.append(read_shard_info(path))
        except OSError as e:
            raise StoreError(
                f"shard {index} of this run is missing ({path}); a run can be resumed only "
                "while its shards exist: they are removed when it completes"
            ) from e
    return infos


# -- reading runs back ----------------------------------------------------------
def load_result(
    run_name: str, *, store: str | BaseStore | None = None, stats: RunStats | None = None
) -> Result:
    """The ``Result`` of a finished or running run, read from the store."""
    db = store if isinstance(store, BaseStore) else open_store(store, root=DEFAULT_ROOT)
    record = db.get_experiment(run_name)
    history: dict[int, list[dict[str, Any]]] = {}
    for epoch in db.list_epochs(run_name):
        row: dict[str, Any] = {"mst_id": epoch.mst_id, "epoch": epoch.epoch, **epoch.metrics}
        row.update(
            train_order=epoch.train_order, eval_order=epoch.eval_order,
            train_seconds=epoch.train_seconds, eval_seconds=epoch.eval_seconds,
        )  # fmt: skip
        history.setdefault(epoch.mst_id, []).append(row)
    factory = _factory_loader(Path(record.run_dir))
    msts = [
        MSTResult(
            id=m.mst_id,
            params=m.params,
            seed=m.seed,
            status=MSTStatus(m.status),
            history=history.get(m.mst_id, []),
            error=m.error,
            traceback=m.traceback,
            checkpoint=Path(m.checkpoint) if m.checkpoint else None,
            best_checkpoint=Path(m.best_checkpoint) if m.best_checkpoint else None,
            _factory=factory,
        )  # fmt: skip
        for m in db.list_msts(run_name)
    ]
    return Result(
        msts=msts, metric=record.spec["metric"], direction=record.spec["direction"],
        run_dir=Path(record.run_dir), stats=stats or _stored_stats(db, run_name),
        name=run_name, provenance=record.provenance, status=record.status.value,
        objectives=dict(record.spec.get("objectives", {})),
        constraints=list(record.spec.get("constraints", [])),
    )  # fmt: skip


def _stored_stats(store: BaseStore, name: str) -> RunStats | None:
    completed = [e for e in store.list_events(name) if e.kind is EventKind.COMPLETED]
    if not completed:
        return None
    detail = dict(completed[-1].detail)
    detail["resident_shard_bytes"] = tuple(detail["resident_shard_bytes"])
    return RunStats(**detail)


class _factory_loader:
    """Loads the run's estimator factory on first use (it may need the user's modules)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, params: dict[str, Any]) -> Any:
        return _load_procedure(self.directory).make_estimator(params)


def load_model(
    run_name: str, mst_id: int, *, store: str | BaseStore | None = None, best: bool = False
) -> nn.Module:
    """The trained model of one MST of a run (its latest state, or its best epoch's)."""
    result = load_result(run_name, store=store)
    for mst in result.msts:
        if mst.id == mst_id:
            return mst.load_model(best=best)
    raise ConfigError(
        f"run {run_name!r} has no MST {mst_id}; its MSTs are {[m.id for m in result.msts]}"
    )
