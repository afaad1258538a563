"""LocalExecutor: one persistent process per worker on this machine.

Each process opens its own shard once and keeps it; model state travels
over the worker's pipe (no files on the way). Processes are spawned, not
forked, so no torch thread pool is inherited in a broken state.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from modelhopper.data._sharding import ShardInfo
from modelhopper.errors import ConfigError, ExecutorError
from modelhopper.executors._base import BaseExecutor, VisitResult, VisitTask
from modelhopper.representations._store import MaterialiseBudget

__all__ = ["LocalExecutor"]


def _default_threads(n_workers: int) -> int:
    """Split the cores between workers so they never oversubscribe them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // n_workers)


def _worker_main(
    worker: int,
    shard_path: str,
    n_shards: int,
    factory_blob: bytes,
    n_threads: int,
    conn: Connection,
    materialise: MaterialiseBudget | None = None,
) -> None:
    import torch

    from modelhopper.data._sharding import open_shard
    from modelhopper.executors._worker import ShardWorker, warm_up_torch

    try:
        torch.set_num_threads(n_threads)
        warm_up_torch()
        shard = open_shard(shard_path)
        factory = cloudpickle.loads(factory_blob)
        runner = ShardWorker(worker, shard, n_shards, factory, materialise=materialise)
    except Exception as e:  # tell the driver why, rather than dying with a bare exit code
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        conn.close()
        return
    # EOF or a broken pipe means the driver is gone (killed or crashed): just exit.
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError), conn:
        conn.send(("ready", shard.nbytes))
        while (task := conn.recv()) is not None:
            conn.send(("result", runner.run(task)))


class LocalExecutor(BaseExecutor):
    """The embedded default: ``n_workers`` processes, each holding one shard.

    A worker that dies is replaced by a new process that re-opens the same
    shard; its visit comes back as ``crashed`` so the driver re-runs it from
    the MST's last state. More than ``max_restarts`` deaths of one worker
    raise ``ExecutorError``. ``materialise`` bounds each worker's materialised
    representations (default ``MaterialiseBudget()``: 512 MiB memory, 4 GiB disk).
    """

    def __init__(
        self,
        *,
        threads_per_worker: int | None = None,
        max_restarts: int = 3,
        start_method: str = "spawn",
        materialise: MaterialiseBudget | None = None,
    ):
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        if max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, got {max_restarts}")
        self.threads_per_worker = threads_per_worker
        self.max_restarts = max_restarts
        if materialise is not None and not isinstance(materialise, MaterialiseBudget):
            raise ConfigError(
                "materialise must be a modelhopper.MaterialiseBudget(memory_bytes=..., "
                f"disk_bytes=...) or None, got {materialise!r}"
            )
        self.materialise = materialise
        self._context: Any = mp.get_context(start_method)
        self._args: list[tuple[Any, ...]] = []
        self._processes: list[Any] = []
        self._conns: list[Connection] = []
        self._busy: dict[int, int] = {}  # worker -> mst_id
        self._resident: list[int] = []
        self.restarts: list[int] = []

    @property
    def n_workers(self) -> int:
        return len(self._processes)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    @property
    def resident_shard_bytes(self) -> list[int]:
        return list(self._resident)

    def start(self, shards: Sequence[ShardInfo], factory: Callable[..., Any]) -> None:
        if self._processes:
            raise ExecutorError("this LocalExecutor is already started; use a new one per run")
        threads = self.threads_per_worker or _default_threads(len(shards))
        blob = cloudpickle.dumps(factory)
        self._args = [(i.index, i.path, len(shards), blob, threads) for i in shards]
        self._processes = [None] * len(shards)
        self._conns = [None] * len(shards)  # type: ignore[list-item]
        self.restarts = [0] * len(shards)
        for worker in range(len(shards)):
            self._spawn(worker)
        self._resident = [self._ready(worker) for worker in range(len(shards))]

    def _spawn(self, worker: int) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(*self._args[worker], child),
            kwargs={"materialise": self.materialise},
            name=f"modelhopper-worker-{worker}",
            daemon=True,
        )
        process.start()
        child.close()
        self._processes[worker] = process
        self._conns[worker] = parent

    def _ready(self, worker: int) -> int:
        try:
            kind, payload = self._conns[worker].recv()
        except (EOFError, OSError) as e:
            raise self._died(worker) from e
        if kind == "error":
            raise ExecutorError(
                f"worker {worker} could not start: {payload}\nIf make_estimator lives in a "
                "module, the worker processes must be able to import it (PYTHONPATH)"
            )
        return payload

    def _replace(self, worker: int) -> None:
        """Start a new process for a dead worker, on the same shard."""
        self.restarts[worker] += 1
        if self.restarts[worker] > self.max_restarts:
            raise self._died(
                worker,
                f"; it died {self.restarts[worker]} times (max_restarts={self.max_restarts})",
            )
        self._conns[worker].close()
        self._processes[worker].join(timeout=1)
        self._spawn(worker)
        self._ready(worker)

    def submit(self, worker: int, task: VisitTask) -> None:
        if worker in self._busy:
            raise ExecutorError(f"worker {worker} is busy with MST {self._busy[worker]}")
        if not self._processes[worker].is_alive():
            self._replace(worker)
        self._busy[worker] = task.mst_id
        # If it died just now, wait() sees its sentinel and reports the crash.
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conns[worker].send(task)

    def wait(self) -> list[VisitResult]:
        if not self._busy:
            raise ExecutorError("wait() with no visit in flight; submit one first")
        busy = sorted(self._busy)
        waitables: dict[Any, int] = {self._conns[w]: w for w in busy}
        waitables.update({self._processes[w].sentinel: w for w in busy})
        ready = wait(list(waitables))
        results = []
        for worker in sorted({waitables[r] for r in ready}):
            try:
                _, result = self._conns[worker].recv()
            except (EOFError, OSError):
                result = self._crashed(worker)
            del self._busy[worker]
            results.append(result)
        return results

    def _crashed(self, worker: int) -> VisitResult:
        mst_id = self._busy[worker]
        self._replace(worker)
        return VisitResult(worker, mst_id, crashed=True)

    def _died(self, worker: int, why: str = "") -> ExecutorError:
        process = self._processes[worker]
        process.join(timeout=1)
        mst = self._busy.get(worker)
        doing = f" while running MST {mst}" if mst is not None else ""
        return ExecutorError(
            f"worker {worker} (pid {process.pid}) died with exit code {process.exitcode}"
            f"{doing}{why}; if it was killed for memory, use fewer workers or smaller batches"
        )

    def shutdown(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self._conns:
            conn.close()
        self._conns = []
        self._processes = []
        self._busy.clear()
