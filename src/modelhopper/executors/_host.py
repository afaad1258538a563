"""The worker process's side of LocalExecutor: open one shard, then run visits until told to stop.

However the process was started (forked from the driver, or forked by the
zygote), it runs ``serve``: its first message is a ``WorkerSpec`` naming the
shard and carrying the pickled estimator factory; then each message is a visit
and each reply its result. EOF means the driver is gone: the worker exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import multiprocessing
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import cloudpickle
import torch

from modelhopper._process import die_with_parent
from modelhopper.data._sharding import open_shard
from modelhopper.estimator import flush_denormals
from modelhopper.executors._shm import ShmWriter
from modelhopper.executors._worker import ShardWorker, warm_up_torch, worker_device
from modelhopper.representations._store import MaterialiseBudget

__all__ = [
    "PROCESS_NAME",
    "Rehome",
    "WorkerSpec",
    "detach_from_parent",
    "die_with_parent",
    "keep_freed_memory",
    "serve",
]

_PR_SET_NAME = 15  # prctl option, linux/prctl.h
PROCESS_NAME = "mh-worker"  # what ps, top and psutil show for a worker process (on Linux)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt options, malloc.h


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process needs to start: its shard and the user's estimator factory."""

    worker: int
    shard_paths: tuple[tuple[int, str], ...]  # (index, path) of the shards it holds
    n_shards: int
    factory_blob: bytes  # cloudpickle of make_estimator: by value, so the script is never re-run
    n_threads: int
    materialise: MaterialiseBudget | None = None
    state_folder: str | None = None  # states hop as files here (_shm.py); None: over the pipe
    driver_pid: int = 0  # owner of those files
    home: tuple[int, ...] = ()  # those of them this worker owns (the rest are replicas)
    device: str | None = None  # where its models train (``worker_device``); None: the CPU
    # (index, path) of every shard whose validation part it may evaluate (shared validation)
    validation_paths: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Rehome:
    """Sent between visits: hold these shards from now on (workers joined or left)."""

    shard_paths: tuple[tuple[int, str], ...]
    home: tuple[int, ...]
    n_threads: int  # torch threads from now on (fewer when workers joined)


def detach_from_parent() -> None:
    """First thing in a forked worker.

    Ctrl-C reaches the whole process group: the driver handles it and stops the
    workers, so they ignore it. A worker never outlives its parent, and is named
    ``mh-worker`` (``ps``, ``top``; a chaos test finds workers so). ``gc.freeze``
    keeps the collector from touching every object inherited from the parent,
    which would copy their pages.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    _set_name(PROCESS_NAME)
    # A worker may start processes of its own (DataLoader workers, Estimator.num_workers),
    # which multiprocessing refuses to a daemonic process. The flag only spares the
    # driver's exit from waiting on the worker, which the kill on the parent's death and
    # the executor's stop already ensure.
    multiprocessing.current_process()._config.pop("daemon", None)  # type: ignore[attr-defined]
    gc.freeze()


def _set_name(name: str) -> None:
    """On Linux, name the process (as a forked one it shows its parent's command line)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15])


def serve(conn: Connection) -> None:
    """Start the worker its first message describes, then answer visits until None or EOF."""
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError), conn:
        spec: WorkerSpec = conn.recv()
        try:
            runner = _start(spec)
        except Exception as e:  # tell the driver why, rather than dying with a bare exit code
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            return
        conn.send(("ready", (runner.nbytes, str(runner.device or "cpu"))))
        folder = spec.state_folder
        writer = ShmWriter(folder, spec.driver_pid, spec.worker) if folder is not None else None
        while (task := conn.recv()) is not None:
            if isinstance(task, Rehome):
                _hold(runner, task)
                conn.send(("held", runner.nbytes))
                continue
            result = runner.run(task)
            if writer is not None and isinstance(result.state, bytes):
                result = dataclasses.replace(result, state=writer.write(result.state))
            conn.send(("result", result))


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next batch instead of returning it to the OS.

    With glibc's defaults (mmap above 128 KiB, heap trimmed above 2x that, both
    moving with what was freed last), a fresh process maps, faults in, zeroes
    and unmaps a batch's activations again on every step: ~10-15% slower
    training than in a long-lived process. Fixed thresholds keep up to 128 MiB
    of freed heap for reuse.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's own upper bound for it
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 2**20)


def _hold(runner: ShardWorker, rehome: Rehome) -> None:
    """Open the shards new to this worker; the others stay as they are."""
    shards = {
        index: runner.shards[index] if index in runner.shards else open_shard(path, map_in=True)
        for index, path in rehome.shard_paths
    }
    runner.hold(shards, rehome.home)
    torch.set_num_threads(rehome.n_threads)


def _start(spec: WorkerSpec) -> ShardWorker:
    keep_freed_memory()
    flush_denormals()  # before the thread pool exists: its threads inherit it
    torch.set_num_threads(spec.n_threads)
    warm_up_torch()
    shards = {index: open_shard(path, map_in=True) for index, path in spec.shard_paths}
    factory = cloudpickle.loads(spec.factory_blob)
    return ShardWorker(
        spec.worker, shards, spec.n_shards, factory, materialise=spec.materialise, home=spec.home,
        device=worker_device(spec.device, spec.worker), validation=dict(spec.validation_paths),
    )  # fmt: skip
