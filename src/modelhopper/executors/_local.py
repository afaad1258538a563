"""LocalExecutor: one persistent process per worker on this machine.

Each process opens its own shard once and keeps it; model state travels
over the worker's pipe (no files on the way). Processes are spawned, not
forked, so no torch thread pool is inherited in a broken state.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from modelhopper.data._sharding import ShardInfo
from modelhopper.errors import ConfigError, ExecutorError
from modelhopper.executors._base import BaseExecutor, VisitResult, VisitTask

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
) -> None:
    import torch

    from modelhopper.data._sharding import open_shard
    from modelhopper.executors._worker import ShardWorker, warm_up_torch

    torch.set_num_threads(n_threads)
    warm_up_torch()
    shard = open_shard(shard_path)
    runner = ShardWorker(worker, shard, n_shards, cloudpickle.loads(factory_blob))
    conn.send(("ready", shard.nbytes))
    while True:
        task = conn.recv()
        if task is None:
            break
        conn.send(("result", runner.run(task)))
    conn.close()


class LocalExecutor(BaseExecutor):
    """The embedded default: ``n_workers`` processes, each holding one shard."""

    def __init__(self, *, threads_per_worker: int | None = None, start_method: str = "spawn"):
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        self.threads_per_worker = threads_per_worker
        self._context: Any = mp.get_context(start_method)
        self._processes: list[Any] = []
        self._conns: list[Connection] = []
        self._busy: dict[int, int] = {}  # worker -> mst_id
        self._resident: list[int] = []

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
        for info in shards:
            parent, child = self._context.Pipe()
            process = self._context.Process(
                target=_worker_main,
                args=(info.index, info.path, len(shards), blob, threads, child),
                name=f"modelhopper-worker-{info.index}",
                daemon=True,
            )
            process.start()
            child.close()
            self._processes.append(process)
            self._conns.append(parent)
        for worker in range(len(shards)):
            _, nbytes = self._receive(worker)
            self._resident.append(nbytes)

    def submit(self, worker: int, task: VisitTask) -> None:
        if worker in self._busy:
            raise ExecutorError(f"worker {worker} is busy with MST {self._busy[worker]}")
        self._busy[worker] = task.mst_id
        try:
            self._conns[worker].send(task)
        except (BrokenPipeError, OSError) as e:
            raise self._died(worker) from e

    def wait(self) -> list[VisitResult]:
        if not self._busy:
            raise ExecutorError("wait() with no visit in flight; submit one first")
        busy = sorted(self._busy)
        conns = {self._conns[w]: w for w in busy}
        sentinels = {self._processes[w].sentinel: w for w in busy}
        ready = wait([*conns, *sentinels])
        results = []
        for obj in ready:
            if obj in conns:
                worker = conns[obj]
                _, result = self._receive(worker)
                del self._busy[worker]
                results.append(result)
        for obj in ready:
            # A dead worker's pipe also reads as ready; handled above if it sent first.
            if obj in sentinels and sentinels[obj] in self._busy:
                raise self._died(sentinels[obj])
        return results

    def _receive(self, worker: int) -> tuple[str, Any]:
        try:
            return self._conns[worker].recv()
        except (EOFError, OSError) as e:
            raise self._died(worker) from e

    def _died(self, worker: int) -> ExecutorError:
        process = self._processes[worker]
        process.join(timeout=1)
        mst = self._busy.get(worker)
        doing = f" while running MST {mst}" if mst is not None else ""
        return ExecutorError(
            f"worker {worker} (pid {process.pid}) died with exit code {process.exitcode}{doing}; "
            "if it was killed for memory, use fewer workers or smaller batches"
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
        self._conns.clear()
        self._processes.clear()
        self._busy.clear()
