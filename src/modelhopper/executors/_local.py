"""LocalExecutor: one persistent process per worker on this machine.

Each process opens its own shard once and keeps it; model state travels over
the worker's pipe (no files on the way). Workers never re-run the user's
script, so a script needs no ``if __name__ == "__main__":`` guard: they are
forked, either from the driver itself (when that is safe: Linux, one thread
per worker, no other Python thread, a CPU build of torch; milliseconds) or from the
zygote, a pre-warmed process started fresh once per driver process
(``_zygote.py``). The user's factory travels by value (cloudpickle).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

import cloudpickle
import torch

from modelhopper._checks import check_bool, check_int
from modelhopper.data._sharding import ShardInfo
from modelhopper.errors import ConfigError, ExecutorError
from modelhopper.executors._base import BaseExecutor, VisitResult, VisitTask
from modelhopper.executors._group import abort
from modelhopper.executors._host import Rehome, WorkerSpec, detach_from_parent, serve
from modelhopper.executors._restarts import RestartBudget, check_worker_options
from modelhopper.executors._shm import ShmFolder, shm_root
from modelhopper.executors._worker import warm_up_torch
from modelhopper.executors._zygote import shared_zygote
from modelhopper.representations._store import MaterialiseBudget
from modelhopper.scheduling import home_holdings, replicated_holdings

__all__ = ["LocalExecutor"]

_START_METHODS = ("auto", "fork", "zygote")
# Data this small is held whole by every worker (replicas="auto"): p copies of 32 MiB
# cost less than the fixed cost of p times as many visits.
AUTO_REPLICATE_BYTES = 32 * 2**20
_LIVENESS_CHECK = 1.0  # seconds between checks that the busy workers still live (see wait)


def _default_threads(n_workers: int) -> int:
    """Split the cores between workers so they never oversubscribe them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // n_workers)


def _fork_is_safe(n_threads: int) -> bool:
    """Whether forking the driver itself gives a sound worker.

    Other Python threads may hold locks the child would wait on forever (a
    notebook kernel has several); a parent's OpenMP pool hangs a child that
    runs more than one thread; CUDA cannot be used after a fork, nor JAX. A torch
    built for GPUs is never forked: its autograd starts a thread per visible GPU at
    the first backward pass (a user's, in the notebook), and a child forked after
    that cannot run autograd; telling whether GPUs are visible would itself start
    CUDA's driver here, which a child cannot use either.
    """
    gpu_build = torch.version.cuda is not None or torch.version.hip is not None
    jax = _jax_started()
    return (
        sys.platform == "linux" and n_threads == 1 and threading.active_count() == 1
        and not gpu_build and not jax
    )  # fmt: skip


def _jax_started() -> bool:
    """Whether JAX has started its runtime here (native threads a fork would not copy).
    Importing jax starts nothing (other libraries import it just to look); its first
    computation does. A JAX without the attribute read here counts as started."""
    if "jax" not in sys.modules:
        return False
    bridge = sys.modules.get("jax._src.xla_bridge")
    backends = getattr(bridge, "_backends", None)
    return backends is None or bool(backends)


class _Process(Protocol):
    pid: int
    conn: Connection

    def is_alive(self) -> bool: ...
    @property
    def exitcode(self) -> int | None: ...
    def join(self, timeout: float) -> None: ...
    def kill(self) -> None: ...


class _ForkedWorker:
    """A worker forked from the driver process (multiprocessing's fork start method)."""

    def __init__(self, others: list[Connection]) -> None:
        context = mp.get_context("fork")
        self.conn, child = context.Pipe()
        # The child closes its copies of the driver's ends (its own and the other
        # workers'), so that each worker sees EOF as soon as the driver is gone.
        self._process = context.Process(
            target=_forked_main,
            args=(child, [*others, self.conn]),
            name="modelhopper-worker",
            daemon=True,
        )
        self._process.start()
        child.close()
        self.pid: int = self._process.pid  # type: ignore[assignment]  # set once started

    def is_alive(self) -> bool:
        return self._process.is_alive()

    @property
    def exitcode(self) -> int | None:
        self._process.join(timeout=1)
        return self._process.exitcode

    def join(self, timeout: float) -> None:
        self._process.join(timeout=timeout)

    def kill(self) -> None:
        self._process.kill()


def _forked_main(conn: Connection, drivers_ends: list[Connection]) -> None:
    detach_from_parent()
    for end in drivers_ends:
        end.close()
    serve(conn)


class LocalExecutor(BaseExecutor):
    """The embedded default: ``n_workers`` processes, each holding one shard.

    A worker that dies at any moment (while starting, idle, mid-visit, while
    state moves) is replaced by a new process that re-opens the same shard; a
    visit it held comes back as ``crashed`` so the driver re-runs it from the
    MST's last state. The restart budget is a rate: more than ``max_restarts``
    deaths of one worker within ``restart_window`` seconds (a crash loop)
    raise ``ExecutorError``; deaths further apart (transient faults in a long
    run) never add up. ``restart_window=float("inf")`` counts every death of
    the run. ``materialise`` bounds each worker's materialised
    representations (default ``MaterialiseBudget()``: 512 MiB memory, 4 GiB disk).
    ``start_method``: ``"auto"`` forks the driver where that is safe and uses
    the zygote elsewhere; ``"fork"`` or ``"zygote"`` force one (see the module).
    ``start_timeout``: seconds a worker may take to start before it counts as
    dead (a loaded machine can take long to start Python and import torch).
    ``shared_memory``: states hop as files in ``/dev/shm`` (``_shm.py``), so the
    driver's pipes carry names, not megabytes; ``False``, or no ``/dev/shm``,
    sends them over the pipes.
    ``replicas``: how many workers hold each shard. ``"auto"`` (default) gives
    every worker the whole dataset when it is at most ``AUTO_REPLICATE_BYTES``
    (32 MiB): an MST then runs a whole epoch per visit instead of one sub-epoch,
    so small runs are not dominated by a fixed cost per visit; larger data keeps
    one copy (``replicas=1``). The results are the same either way: every MST
    still trains on the shards in its planned order (``scheduling.py``).
    ``device``: where the workers' models train: None (the CPU), one device for every
    worker (``"cuda"`` spreads them over the GPUs the workers see, worker ``w`` on GPU
    ``w`` mod their number; ``"cuda:1"`` puts all on that one), or a list, worker ``w``
    on ``device[w % len(device)]``. States hop in CPU form, so an MST may continue on a
    worker with another device. The driver never touches CUDA; each worker checks its
    device when it starts (a GPU that is not there fails the start, saying so).
    ``rebalance``: with logical shards (``n_shards`` > workers), move shards between
    workers in proportion to their measured speeds, so that a worker twice as slow
    (a busier or older machine) owns half as many; the results do not change.
    ``shared_validation``: every worker may read every shard's validation part (the
    shards are memory-mapped files on this machine: the page cache holds them once),
    so an epoch is evaluated whole by the worker that ends its training, instead of
    visiting every worker again; its reports come sooner, its metrics are the same.
    """

    def __init__(
        self,
        *,
        threads_per_worker: int | None = None,
        max_restarts: int = 3,
        restart_window: float = 600.0,
        start_method: str = "auto",
        materialise: MaterialiseBudget | None = None,
        start_timeout: float = 300.0,
        shared_memory: bool = True,
        replicas: int | str = "auto",
        rebalance: bool = False,
        device: str | Sequence[str] | None = None,
        shared_validation: bool = False,
    ):
        check_worker_options(
            threads_per_worker=threads_per_worker, max_restarts=max_restarts,
            restart_window=restart_window, start_timeout=start_timeout,
        )  # fmt: skip
        if start_method not in _START_METHODS:
            raise ConfigError(
                f"start_method must be one of {', '.join(map(repr, _START_METHODS))}, "
                f"got {start_method!r}; 'auto' picks the fastest safe one"
            )
        if start_method == "fork" and sys.platform != "linux":
            raise ConfigError(
                f"start_method='fork' is for Linux; this is {sys.platform}: use 'auto' or 'zygote'"
            )
        if materialise is not None and not isinstance(materialise, MaterialiseBudget):
            raise ConfigError(
                "materialise must be a modelhopper.MaterialiseBudget(memory_bytes=..., "
                f"disk_bytes=...) or None, got {materialise!r}"
            )
        if replicas != "auto":
            check_int("replicas", replicas, example="replicas=2, or 'auto'")
        self.shared_validation = check_bool("shared_validation", shared_validation)
        self.device = _check_device(device)
        self.replicas = replicas
        self.rebalance = bool(rebalance)
        self.threads_per_worker = threads_per_worker
        self.max_restarts = max_restarts
        self.restart_window = float(restart_window)
        self.start_method = start_method
        self.start_timeout = float(start_timeout)
        self.materialise = materialise
        self.shared_memory = bool(shared_memory)
        self._states: ShmFolder | None = None
        self._specs: list[WorkerSpec] = []
        self._shards: list[ShardInfo] = []
        self._processes: list[_Process] = []
        # worker -> its visit in flight (which keeps the states it names alive: _shm.py)
        self._busy: dict[int, VisitTask] = {}
        self._lost: list[VisitResult] = []  # visits sent to a worker found dead, not yet reported
        self._resident: list[int] = []
        self._devices: list[str] = []  # each worker's device, as the worker resolved it
        self._budget = RestartBudget(0, max_restarts, restart_window)
        self.start_methods: list[str] = []  # how each worker process was started, for tests
        self._group_folder: str | None = None  # the rendezvous files of group visits
        self._n_groups = 0

    @property
    def n_workers(self) -> int:
        return len(self._processes)

    @property
    def restarts(self) -> list[int]:
        """Deaths of each worker over the run (each one replaced)."""
        return list(self._budget.counts)

    @property
    def pids(self) -> list[int]:
        """The worker processes' pids, by worker (while starting: those launched so far)."""
        return [p.pid for p in self._processes if p is not None]

    @property
    def devices(self) -> list[str]:
        """The device each worker trains on (``"cpu"``, ``"cuda:0"``...), by worker."""
        return list(self._devices)

    @property
    def resident_shard_bytes(self) -> list[int]:
        return list(self._resident)

    def prepare(self, n_workers: int) -> None:
        """Start the zygote now if the workers will need it, so it warms up during sharding."""
        if self._method(self._threads(n_workers)) == "zygote":
            shared_zygote()

    def holdings(
        self, shards: Sequence[ShardInfo], n_workers: int | None = None
    ) -> tuple[tuple[int, ...], ...]:
        n = n_workers or len(shards)
        return replicated_holdings(n, self._replicas(shards, n), len(shards))

    def replication(self, n_workers: int) -> int:
        return self._replicas(self._shards, n_workers)

    def _replicas(self, shards: Sequence[ShardInfo], n_workers: int) -> int:
        if self.replicas != "auto":
            return min(int(self.replicas), n_workers)
        small = sum(i.nbytes for i in shards) <= AUTO_REPLICATE_BYTES
        return n_workers if small else 1

    def start(
        self, shards: Sequence[ShardInfo], factory: Callable[..., Any], n_workers: int | None = None
    ) -> None:
        self._refuse_second_start(bool(self._processes))
        n = n_workers or len(shards)
        self._shards = list(shards)
        threads = self._threads(n)
        blob = _pickle_factory(factory)
        root = shm_root() if self.shared_memory else None
        self._states = ShmFolder(root) if root is not None else None
        folder = str(self._states.path) if self._states is not None else None
        held, homes = self.holdings(shards, n), home_holdings(n, len(shards))
        every = tuple((s, shard.path) for s, shard in enumerate(shards))
        self._specs = [
            WorkerSpec(
                w, tuple((s, shards[s].path) for s in held[w]), len(shards), blob, threads,
                self.materialise, folder, os.getpid(), home=homes[w], device=self._device_of(w),
                validation_paths=every if self.shared_validation else (),
            )
            for w in range(n)
        ]  # fmt: skip
        self._processes = [None] * n  # type: ignore[list-item]
        self._budget = RestartBudget(n, self.max_restarts, self.restart_window)
        self.start_methods = [""] * n
        self._devices = [""] * n
        for worker in range(n):
            self._launch(worker)
        self._resident = [self._ready(worker) for worker in range(n)]

    # -- data-parallel groups: the members meet through a file ------------------------------
    groups = True

    @property
    def group_shared_memory(self) -> bool:
        """Members sum through /dev/shm, on x86 (see ``_group``); else through gloo."""
        return shm_root() is not None and platform.machine() in ("x86_64", "AMD64")

    def group_rendezvous(self) -> str:
        if self._group_folder is None:
            root = shm_root() if self.group_shared_memory else None
            self._group_folder = tempfile.mkdtemp(prefix="modelhopper-groups-", dir=root)
        self._n_groups += 1
        return os.path.join(self._group_folder, f"group-{self._n_groups}")

    def abort_group(self, rendezvous: str) -> None:
        abort(rendezvous)

    # -- workers joining and leaving -------------------------------------------------------
    elastic = True

    def add_worker(self, held: Sequence[int], home: Sequence[int]) -> int:
        worker = len(self._processes)
        threads = self._threads(len(self.pids) + 1)  # the pool's share of the cores
        spec = dataclasses.replace(
            self._specs[0], worker=worker, n_threads=threads, device=self._device_of(worker)
        )
        self._specs.append(spec)
        self._specs[worker] = self._holding(worker, held, home)
        self._processes.append(None)  # type: ignore[arg-type]
        self._budget.add_worker()
        self.start_methods.append("")
        self._resident.append(0)
        self._devices.append("")
        self._launch(worker)
        self._resident[worker] = self._ready(worker)
        return worker

    def rehome(self, worker: int, held: Sequence[int], home: Sequence[int]) -> None:
        self._refuse_busy(worker, self._busy[worker].mst_id if worker in self._busy else None)
        self._specs[worker] = self._holding(worker, held, home)
        self._reconfigure(worker)

    def _reconfigure(self, worker: int) -> None:
        """Send the idle worker its spec's shards and threads; wait until it holds them."""
        spec = self._specs[worker]
        process = self._processes[worker]
        try:
            process.conn.send(Rehome(spec.shard_paths, spec.home, spec.n_threads))
            if not process.conn.poll(self.start_timeout):
                raise OSError("no answer")
            _, self._resident[worker] = process.conn.recv()
        except (EOFError, OSError):
            # Dead (or hung: then killed). Its next visit finds it dead, replaces it (the new
            # process opens what the spec names) and reports the visit crashed, so the driver
            # sends the MST's state again instead of trusting the lost process's memory.
            if process.is_alive():
                process.kill()
                process.join(timeout=5)

    def remove_worker(self, worker: int) -> None:
        self._refuse_busy(worker, self._busy[worker].mst_id if worker in self._busy else None)
        process = self._processes[worker]
        with contextlib.suppress(BrokenPipeError, OSError):
            process.conn.send(None)
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        process.conn.close()
        self._processes[worker] = None  # type: ignore[call-overload]
        self._resident[worker] = 0

    def _fewer_threads(self, worker: int) -> None:
        """Lower the idle worker's threads to its share once workers joined (never raised:
        a forked worker must stay single-threaded)."""
        share = self._threads(len(self.pids))
        if self._specs[worker].n_threads > share:
            self._specs[worker] = dataclasses.replace(self._specs[worker], n_threads=share)
            self._reconfigure(worker)

    def _holding(self, worker: int, held: Sequence[int], home: Sequence[int]) -> WorkerSpec:
        paths = tuple((s, self._shards[s].path) for s in sorted(held))
        return dataclasses.replace(self._specs[worker], shard_paths=paths, home=tuple(home))

    def _device_of(self, worker: int) -> str | None:
        return self.device[worker % len(self.device)] if self.device else None

    def _threads(self, n_workers: int) -> int:
        return self.threads_per_worker or _default_threads(n_workers)

    def _method(self, n_threads: int) -> str:
        safe = _fork_is_safe(n_threads)
        if self.start_method == "fork" and not safe:
            raise ConfigError(
                "start_method='fork' is unsafe here (it needs Linux, threads_per_worker=1, no "
                "other thread in this process and a CPU build of torch; threads per worker: "
                f"{n_threads}, torch {torch.__version__}, "
                f"threads: {threading.active_count()}): a forked worker could hang; use "
                "start_method='auto' or 'zygote'"
            )
        if self.start_method != "auto":
            return self.start_method
        return "fork" if safe else "zygote"

    def _launch(self, worker: int) -> None:
        spec = self._specs[worker]
        method = self._method(spec.n_threads)
        self._processes[worker] = self._spawn(worker, method)
        self.start_methods[worker] = method
        with contextlib.suppress(BrokenPipeError, OSError):  # a dead child shows in _ready
            self._processes[worker].conn.send(spec)

    def _spawn(self, worker: int, method: str) -> _Process:
        """A new process for ``worker``, waiting for its spec (it has done nothing yet)."""
        if method == "fork":
            warm_up_torch()  # once here, rather than once in every child
            others = [p.conn for p in self._processes if p is not None]
            return _ForkedWorker(others)
        return _fork_from_zygote(self.start_timeout)

    def _ready(self, worker: int) -> int:
        """Wait until the worker has opened its shard; return the shard's size in bytes.

        A worker that dies while starting is started again, within its restart budget.
        """
        while True:
            process = self._processes[worker]
            try:
                if not process.conn.poll(self.start_timeout):
                    process.kill()
                    raise ExecutorError(
                        f"worker {worker} did not start within {self.start_timeout:.0f} s; the "
                        "machine may be overloaded: raise LocalExecutor(start_timeout=...)"
                    )
                kind, payload = process.conn.recv()
            except (EOFError, OSError):  # it died while starting
                self._relaunch(worker)
                continue
            if kind == "error":
                raise ExecutorError(
                    f"worker {worker} could not start: {payload}\nIf make_estimator lives in a "
                    "module, the worker processes must be able to import it (PYTHONPATH)"
                )
            nbytes, self._devices[worker] = payload
            return nbytes

    def _replace(self, worker: int) -> None:
        """Start a new process for a dead worker, on the same shard, and wait until it is ready."""
        self._relaunch(worker)
        self._ready(worker)

    def _relaunch(self, worker: int) -> None:
        """Count a death of the worker against its restart budget; start a new process for it."""
        if crash_loop := self._budget.died(worker):
            raise self._died(worker, crash_loop, f"; {self._budget.fix('LocalExecutor')}")
        old = self._processes[worker]
        old.conn.close()
        if old.is_alive():  # as good as dead (it timed out, or closed its end): make sure
            old.kill()
        old.join(timeout=1)
        self._launch(worker)

    def submit(self, worker: int, task: VisitTask) -> None:
        self._refuse_busy(worker, self._busy[worker].mst_id if worker in self._busy else None)
        if self._processes[worker].is_alive():
            self._fewer_threads(worker)  # workers joined since its last visit: cores are shared
        self._busy[worker] = task
        if not self._processes[worker].is_alive():
            # It died while idle: its replacement holds no MST in memory, so the visit
            # comes back as crashed and the driver sends it again with the MST's state.
            self._replace(worker)
            self._lost.append(VisitResult(worker, task.mst_id, crashed=True))
            return
        self._hand(worker, task)

    def _hand(self, worker: int, task: VisitTask) -> None:
        """Send the visit to its live worker; if it died just now, wait() sees the EOF."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self._processes[worker].conn.send(task)

    def wait(self) -> list[VisitResult]:
        self._refuse_idle_wait(len(self._busy))
        if self._lost:
            return self._take_lost()
        # A worker that dies closes its end: its connection turns readable, then EOF. A
        # process it started (a DataLoader worker) may hold the end open for a while, so
        # the busy workers' lives are also checked every _LIVENESS_CHECK seconds.
        while not (results := self._finished(timeout=_LIVENESS_CHECK)):
            if dead := [w for w in sorted(self._busy) if not self._processes[w].is_alive()]:
                return [self._crashed(w) for w in dead]
        return results

    def poll(self) -> list[VisitResult]:
        if self._lost:
            return self._take_lost()
        return self._finished(timeout=0) if self._busy else []

    def _take_lost(self) -> list[VisitResult]:
        lost, self._lost = self._lost, []
        for result in lost:
            del self._busy[result.worker]
        return lost

    def _finished(self, timeout: float) -> list[VisitResult]:
        """Results of the busy workers whose pipe turns readable within ``timeout``."""
        waitables: dict[Any, int] = {self._processes[w].conn: w for w in sorted(self._busy)}
        results = []
        for worker in sorted(waitables[r] for r in wait(list(waitables), timeout=timeout)):
            try:
                _, result = self._processes[worker].conn.recv()
            except (EOFError, OSError):
                result = self._crashed(worker)
            else:
                del self._busy[worker]
            results.append(result)
        return results

    def _crashed(self, worker: int) -> VisitResult:
        """The busy worker died: replace it, and report its visit as crashed (no longer busy)."""
        mst_id = self._busy[worker].mst_id
        self._replace(worker)
        del self._busy[worker]
        return VisitResult(worker, mst_id, crashed=True)

    def _died(self, worker: int, why: str = "", fix: str = "") -> ExecutorError:
        process = self._processes[worker]
        task = self._busy.get(worker)
        mst = task.mst_id if task is not None else None
        doing = f" while running MST {mst}" if mst is not None else ""
        return ExecutorError(
            f"worker {worker} (pid {process.pid}) died with exit code {process.exitcode}"
            f"{doing}{why}; if it was killed for memory, use fewer workers or smaller batches"
            f"{fix}"
        )

    def shutdown(self) -> None:
        for process in self._processes:
            if process is None:
                continue
            try:
                process.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process in self._processes:
            if process is None:
                continue
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
            process.conn.close()
        self._processes = []
        self._busy.clear()
        self._lost.clear()
        if self._states is not None:
            self._states.remove()
            self._states = None
        if self._group_folder is not None:
            shutil.rmtree(self._group_folder, ignore_errors=True)
            self._group_folder = None


def _check_device(device: object) -> tuple[str, ...]:
    """``device`` as one device name per worker in turn (empty: the CPU, as before)."""
    if device is None:
        return ()
    names = (device,) if isinstance(device, str) else device
    fix = "e.g. device='cuda', device='cuda:1' or device=['cuda:0', 'cuda:1']"
    if not isinstance(names, Sequence) or not names:
        raise ConfigError(f"device must be a device name or a list of them, {fix}; got {device!r}")
    for name in names:
        try:
            torch.device(name)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device {name!r} is not a PyTorch device name ({e}); {fix}") from e
    return tuple(names)


def _fork_from_zygote(timeout: float) -> _Process:
    """A worker forked by the shared zygote; a zygote found dead is started again, once."""
    zygote = shared_zygote()
    try:
        return zygote.fork(timeout)
    except ExecutorError:
        if zygote.alive:
            raise
        return shared_zygote().fork(timeout)  # killed since its last fork: a fresh one


def _pickle_factory(factory: Callable[..., Any]) -> bytes:
    try:
        return cloudpickle.dumps(factory)
    except Exception as e:
        raise ConfigError(
            f"make_estimator cannot be sent to the worker processes ({type(e).__name__}: {e}); "
            "build what it needs (models, data, locks, open files) inside it instead of "
            "capturing them from the enclosing scope"
        ) from e
