"""RayExecutor: MOP across machines, one Ray actor per worker, pinned to its node.

Each actor owns one shard for the whole run and reads it on its own node,
from a path that node can read, from files shipped to it once, or (several
nodes, a source every node reads) from the shard a Ray task built on that
node before the actor was placed there: then the shard never crosses the
network and the run directory need not be shared. Model state
hops actor to actor through Ray's object store: an actor returns its state as
an object, and the driver hands that object's reference to the next actor,
which pulls the bytes from the node that made them. The driver holds
references and metadata; it copies a state to itself only to write the
checkpoint.

A dead actor (killed at any moment, while starting too) is replaced on the
same node when that node is alive (node affinity), else on another node,
which re-materialises the shard (shipped, or built again there from the
source); the interrupted visit then re-runs from the MST's last state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import psutil

from modelhopper._checks import check_bool, check_int
from modelhopper.data._sharding import ShardInfo, validation_file_names, validation_files
from modelhopper.errors import ConfigError, ExecutorError
from modelhopper.executors._base import (
    BaseExecutor,
    PoolChanges,
    StateLostError,
    StateRef,
    VisitResult,
    VisitTask,
)
from modelhopper.executors._group import GroupHost
from modelhopper.executors._restarts import RestartBudget, check_worker_options
from modelhopper.representations._store import MaterialiseBudget
from modelhopper.scheduling import home_holdings, replicated_holdings

__all__ = ["RayExecutor"]

_DATA_MODES = ("auto", "path", "ship")


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "RayExecutor needs Ray, an optional extra: pip install 'modelhopper[ray]'"
        ) from e
    return ray


class _RayState(StateRef):
    """A state in Ray's object store, on the node of the actor that produced it."""

    def __init__(self, ref: Any, nbytes: int) -> None:
        self.ref = ref
        self.nbytes = nbytes

    def fetch(self) -> bytes:
        ray = import_ray()
        try:
            return ray.get(self.ref)
        except ray.exceptions.ObjectLostError as e:  # its node died before the driver saved it
            raise StateLostError("the Ray object holding it went with its node") from e


class _ShardActor:
    """The body of a worker actor: hosts a ShardWorker next to the shards it holds."""

    def __init__(
        self,
        worker: int,
        n_shards: int,
        factory_blob: bytes,
        n_threads: int,
        materialise: Any = None,
        shared_validation: bool = False,
    ) -> None:
        import ray
        import torch

        from modelhopper.estimator import flush_denormals
        from modelhopper.executors._host import keep_freed_memory
        from modelhopper.executors._worker import warm_up_torch

        keep_freed_memory()
        _sweep_dead_copies()
        flush_denormals()  # before the thread pool exists: its threads inherit it
        torch.set_num_threads(n_threads)
        warm_up_torch()
        self.worker = worker
        self.n_shards = n_shards
        self.factory = cloudpickle.loads(factory_blob)
        self.materialise = materialise
        self.shared_validation = shared_validation
        # An actor given a GPU trains on it (Ray sets CUDA_VISIBLE_DEVICES to it).
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else None
        self.runner: Any = None
        self.paths: dict[int, str] = {}  # shard -> the folder it was opened from, on this node
        self.copies: set[int] = set()  # shards held as local copies (shipped or copied)
        # shared validation: shard -> the folder of its validation part on this node, for
        # shards this actor does not hold; those in ``val_copies`` are local copies
        self.val_paths: dict[int, str] = {}
        self.val_copies: set[int] = set()

    def close(self) -> None:
        """Delete the local copies of shards (a shard read in place is left alone)."""
        self.runner = None  # closes the shards' memory maps
        for index in list(self.copies):
            self._drop_copy(index)
        for index in list(self.val_copies):
            self._drop_validation(index)

    def _drop_validation(self, index: int) -> None:
        import shutil

        path = self.val_paths.pop(index)
        if index in self.val_copies:
            self.val_copies.discard(index)
            shutil.rmtree(path, ignore_errors=True)

    def _drop_copy(self, index: int) -> None:
        import shutil

        self.copies.discard(index)
        shutil.rmtree(self.paths.pop(index), ignore_errors=True)

    def discard(self, paths: list[str]) -> None:
        """The run is over and its shards are not kept: delete these shards of this node."""
        import shutil

        self.runner = None
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)

    def can_read(self, paths: list[str]) -> list[bool]:
        return [(Path(path) / "shard.json").is_file() for path in paths]

    def shard_files(self, index: int) -> dict[str, bytes]:
        """The files of a shard this actor holds: another actor copies them (re-homing).
        Called in the copy group's thread (``_COPY_GROUP``), so it is served while the
        actor trains: the driver waiting on a joiner's shards never waits for a visit."""
        return _shard_files(self.paths[index])

    def validation_files(self, index: int) -> dict[str, bytes]:
        """The validation part of a shard this actor holds, for an actor on a node that
        cannot read it (shared validation); served like ``shard_files``."""
        return validation_files(self.paths[index])

    def see_validation(self, sources: list[_Source]) -> dict[str, Any]:
        """Shared validation: keep exactly the validation parts of the shards ``sources``
        names (those this actor does not hold): one it has already stays, else it is read
        in place at its path or written from ``files`` (copied from a holder, or shipped)."""
        missing, copied = [], 0
        for source in sources:
            if source.index in self.val_paths:
                continue
            if (local := self._local_path(source, "validation", self.val_copies)) is None:
                missing.append(source.index)  # the executor asks again
                continue
            self.val_paths[source.index], written = local
            copied += written
        for index in set(self.val_paths) - {s.index for s in sources}:
            self._drop_validation(index)
        self.runner.read_validation(self.val_paths)
        return {"missing": missing, "copied_bytes": copied, "validation": sorted(self.val_paths)}

    @staticmethod
    def _local_path(source: _Source, kind: str, copies: set[int]) -> tuple[str, int] | None:
        """Where ``source`` lies on this node and the bytes written there for it: its path
        (none written), or its files written here (then noted in ``copies``); None when
        the actor they were copied from died."""
        if source.files is None:
            return source.path, 0
        if (files := _fetch(source.files)) is None:
            return None
        copies.add(source.index)
        return _materialise(files, f"{kind}-{source.index}"), sum(map(len, files.values()))

    def hold(self, sources: list[_Source], home: list[int]) -> dict[str, Any]:
        """Hold exactly the shards named in ``sources`` from now on (owning ``home``): keep
        those already open, open the others from their path on this node, from files (a copy
        from another actor, or shipped by the driver), or by running their build here."""
        import ray

        from modelhopper.data._sharding import open_shard
        from modelhopper.executors._worker import ShardWorker

        held = self.runner.shards if self.runner is not None else {}
        shards, built, missing = {}, 0, []
        for source in sources:
            if source.index in held:
                shards[source.index] = held[source.index]
                continue
            if (local := self._local_path(source, "shard", self.copies)) is None:
                missing.append(source.index)  # the executor asks again
                continue
            path = local[0]
            if source.build is not None and not (Path(path) / "shard.json").is_file():
                cloudpickle.loads(source.build)()  # this node lost the shard built for it
                built += 1
            self.paths[source.index] = path
            shards[source.index] = open_shard(path, map_in=True)
        for index in [i for i in self.paths if i not in shards]:  # dropped: re-homed elsewhere
            if self.shared_validation:
                self._keep_validation(index)  # evaluated here still: keep it on this node
            if index in self.copies:
                self._drop_copy(index)
            else:
                del self.paths[index]
        if self.runner is None:
            self.runner = ShardWorker(
                self.worker, shards, self.n_shards, self.factory, materialise=self.materialise,
                device=self.device, home=home,
            )  # fmt: skip
        else:
            self.runner.hold(shards, home)
        if self.shared_validation:  # a shard held now is evaluated from its held copy
            for index in [i for i in self.val_paths if i in shards]:
                self._drop_validation(index)
            self.runner.read_validation(self.val_paths)
        return {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "nbytes": self.runner.nbytes,
            "paths": dict(self.paths),
            "device": self.device or "cpu",
            "built": built,
            "missing": missing,
            "validation": sorted(self.val_paths),
        }

    def _keep_validation(self, index: int) -> None:
        """A shard this actor stops holding stays evaluable here: its folder when read in
        place, else a local copy of its validation part (before the copy is deleted)."""
        if index not in self.copies:
            self.val_paths[index] = self.paths[index]
            return
        self.val_paths[index] = _link_validation(self.paths[index], f"validation-{index}")
        self.val_copies.add(index)

    def run(
        self, task: VisitTask, state: bytes | None, init_state: bytes | None
    ) -> tuple[VisitResult, bytes | None]:
        from modelhopper.estimator import flush_denormals

        # With a concurrency group, Ray runs tasks on a thread of its own: the setting
        # is per thread, so this one flushes too (as in __init__; idempotent, cheap).
        flush_denormals()
        # Ray resolved the state references: the bytes came from the producing node.
        result = self.runner.run(dataclasses.replace(task, state=state, init_state=init_state))
        out = result.state
        assert out is None or isinstance(out, bytes)
        meta = dataclasses.replace(result, state=None, state_nbytes=len(out or b""))
        return meta, out


# The actors' second thread: shard copies for other actors, served during a visit.
_COPY_GROUP = "copy"


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where an actor gets one shard it is to hold: its ``path`` on the actor's node, or
    ``files`` (bytes, or a reference to another actor's copy), or by running ``build``
    there when the path is not readable."""

    index: int
    path: str
    files: Any = None
    build: bytes | None = None
    source: int | None = None  # the worker whose actor ``files`` are copied from


def _fetch(files: Any) -> dict[str, bytes] | None:
    """Files sent to an actor: bytes, or a reference to another actor's copy (None when
    that actor died before serving it)."""
    import ray

    if not isinstance(files, ray.ObjectRef):
        return files
    try:
        return ray.get(files)
    except Exception:
        return None


def _copies_folder() -> Path:
    """Where the actors of this node write the shards (and validation parts) they copy,
    each in a folder named after the actor's pid."""
    import tempfile

    return Path(tempfile.gettempdir()) / "modelhopper-shards"


def _materialise(files: Mapping[str, bytes], name: str) -> str:
    """Write a copied shard (or its validation part) under this node's temp dir and
    return its folder."""
    folder = _own_copy_folder(name)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return str(folder)


def _link_validation(path: str, name: str) -> str:
    """A folder of its own for the validation part of the shard copy at ``path``, which is
    about to be deleted: its files hard-linked (no bytes read; the part may be large),
    copied on disk where links are refused."""
    import shutil

    folder = _own_copy_folder(name)
    for file in validation_file_names(path):
        target = folder / file
        target.unlink(missing_ok=True)
        try:
            os.link(Path(path) / file, target)
        except OSError:
            shutil.copyfile(Path(path) / file, target)
    return str(folder)


def _own_copy_folder(name: str) -> Path:
    """This actor's folder ``name`` for a copy, created: named after its pid, which is
    how ``_sweep_dead_copies`` finds the copies of actors that died."""
    folder = _copies_folder() / f"{os.getpid()}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _sweep_dead_copies() -> None:
    """Delete the copies of actors on this node that died without closing (killed by a
    crash, for memory, or with their node's processes): an actor that closes deletes its
    own, one killed cannot, and a shard copy may be gigabytes. An actor that lives (of
    any run on this node) keeps them."""
    import shutil

    for folder in _copies_folder().glob("*-*"):
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's: it lives
        return True


def _pickle_factory(factory: Callable[..., Any]) -> bytes:
    """Pickle the factory so that other nodes can load it.

    Code of an installed package is pickled by reference (every node must have
    the package); a user's own module (a spec file, a script, a test) goes by
    value, since the nodes' Python paths do not have it.
    """
    module = sys.modules.get(getattr(factory, "__module__", "") or "")
    file = getattr(module, "__file__", None) or ""
    if module is None or module.__name__ == "__main__" or "-packages" in file:
        return cloudpickle.dumps(factory)
    cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(factory)
    finally:
        cloudpickle.unregister_pickle_by_value(module)


_BUILD_RETRIES = 2


def _run_build(blob: bytes) -> tuple[str, Any]:
    """A Ray task: one shard's build, shipped as a cloudpickled closure; (node, result)."""
    import ray

    return ray.get_runtime_context().get_node_id(), cloudpickle.loads(blob)()


def _shard_files(path: str) -> dict[str, bytes]:
    folder = Path(path)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _driver_files(path: str, read: Callable[[str], dict[str, bytes]]) -> dict[str, bytes]:
    """The driver's copy of a shard's files (``read``: all, or its validation part), to
    ship to a node that cannot read them."""
    if not (Path(path) / "train_y.npy").is_file():  # the driver keeps only shard.json of those
        raise ExecutorError(
            f"shard {path} is neither on the node of its worker nor here to ship: it was "
            "built on a node of the cluster (data='auto'). Resume on the same nodes, put the "
            "run directory on storage every node reads, or start the run again"
        )
    return read(path)


class RayExecutor(BaseExecutor):
    """Run MOP on a Ray cluster: one actor per worker, each pinned to the node of its shards.

    Args:
        address: ``None`` starts a new Ray instance on this machine (or uses the
            one already initialised in this process, or ``RAY_ADDRESS`` when it is
            set); ``"auto"`` joins the cluster this machine belongs to;
            ``"ray://host:10001"`` uses Ray Client.
        resources_per_worker: Ray resources of each worker actor, e.g.
            ``{"CPU": 1, "GPU": 0}``; torch threads default to its CPUs.
        data: how actors get their shards. ``"path"``: read the shard folder on
            the actor's node (shared storage, or the same machine); ``"ship"``:
            the driver sends the shard files to the node once; ``"auto"``
            (default): the path when the node can read it, else ship. With
            ``"auto"`` on several nodes, a source that reads any row (image
            folder, Parquet, Hugging Face, torch Dataset) is sharded by Ray
            tasks, each on the node of the worker that owns the shard: the
            source must be readable from the nodes (shared or object storage, or
            a copy on each), the run directory need not be; if a build fails
            there, the driver builds the shards and ships them.
        replicas: how many workers hold each shard (default 1: one copy of the
            data across the cluster). With more, the scheduler runs a step on
            any holder (fewer waits on a busy or slow worker) and a worker that
            leaves or dies loses no shard. A shard a worker newly holds (a
            replica, or one re-homed when workers join or leave) is read in
            place where its node can, else copied from an actor holding it,
            else built again on the node, else shipped by the driver.
        max_restarts: deaths of one worker tolerated within ``restart_window``
            seconds (a rate: deaths further apart never add up); one more fails
            the run as a crash loop.
        restart_window: seconds, default 600 (``float("inf")``: the whole run).
        start_timeout: seconds to wait for the workers to be placed and open
            their shards before giving up with the cluster's free resources.
        init_kwargs: extra keyword arguments for ``ray.init``.
        materialise: bounds each worker's materialised representations
            (default ``MaterialiseBudget()``), as on ``LocalExecutor``.
        follow_cluster: the pool follows the cluster's nodes. A node that joins
            gets as many new workers as its resources fit (each pinned to it),
            and a worker whose node leaves (or dies) leaves the run, its shards
            re-homed to the others, instead of being started again on another
            node. Default False: the pool keeps its size, a lost worker is
            replaced wherever there is room.
        rebalance: with logical shards, move shards between workers in proportion
            to their measured speeds (a node twice as slow owns half as many
            shards); the results do not change.
        shared_validation: every worker can evaluate every shard's validation
            part, so an epoch is evaluated whole by the worker that ends its
            training instead of visiting every worker again (its reports come
            sooner, its metrics are the same). An actor reads a validation part
            in place where its node can, else gets a copy of it (only the
            validation arrays) from an actor holding the shard, else from the
            driver; ``copied_bytes`` / ``shipped_bytes`` count them.

    A worker given a GPU (``{"GPU": 1}``) trains its MSTs on it. Workers may be
    added to and removed from a running run (``RunHandle.add_workers`` /
    ``remove_worker``, ``modelhopper workers RUN --add N / --remove W``): a new
    actor is placed where the cluster has room (a node that just joined).
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        resources_per_worker: Mapping[str, float] | None = None,
        threads_per_worker: int | None = None,
        data: str = "auto",
        replicas: int = 1,
        max_restarts: int = 3,
        restart_window: float = 600.0,
        start_timeout: float = 120.0,
        init_kwargs: Mapping[str, Any] | None = None,
        materialise: MaterialiseBudget | None = None,
        follow_cluster: bool = False,
        rebalance: bool = False,
        shared_validation: bool = False,
    ) -> None:
        resources = dict(resources_per_worker or {"CPU": 1})
        for name, amount in resources.items():
            if not isinstance(amount, int | float) or isinstance(amount, bool) or amount < 0:
                raise ConfigError(
                    f"resources_per_worker[{name!r}] must be a number >= 0, got {amount!r}"
                )
        if data not in _DATA_MODES:
            raise ConfigError(
                f"data must be one of {', '.join(map(repr, _DATA_MODES))}, got {data!r}"
            )
        check_int("replicas", replicas, example="replicas=2")
        check_worker_options(
            threads_per_worker=threads_per_worker, max_restarts=max_restarts,
            restart_window=restart_window, start_timeout=start_timeout,
        )  # fmt: skip
        self.address = address
        self.resources = resources
        self.threads_per_worker = threads_per_worker or max(1, int(resources.get("CPU", 1)))
        self.data = data
        self.replicas = replicas
        self.max_restarts = max_restarts
        self.restart_window = float(restart_window)
        self._budget = RestartBudget(0, max_restarts, restart_window)
        self.start_timeout = start_timeout
        self.init_kwargs = dict(init_kwargs or {})
        self.materialise = materialise
        self._ray: Any = None
        self._owns_ray = False
        self._actor_class: Any = None
        self._shards: list[ShardInfo] = []
        self._factory_blob = b""
        self._actors: list[Any] = []  # by worker; None once it left the run
        self._infos: list[dict[str, Any]] = []
        self._held: list[tuple[int, ...]] = []  # by worker: the shards it holds
        self._home: list[tuple[int, ...]] = []  # by worker: the shards it owns
        self._opened_by: dict[int, dict[int, str]] = {}  # worker -> its actor's open shards
        self._busy: dict[int, tuple[int, Any, Any]] = {}  # worker -> (mst, meta ref, state ref)
        self._answered: set[int] = set()  # workers whose current actor has started and answered
        self.shipped_bytes = 0  # shard bytes the driver sent to nodes
        self.copied_bytes = 0  # shard bytes actors copied from one another (re-homing)
        self._n_planned = 0  # workers the run starts with (``prepare``)
        self._homes: dict[int, str] = {}  # worker -> node its owned shards were built on
        self._builds: dict[int, bytes] = {}  # shard -> its build, to build it again
        self.build_nodes: list[str] = []  # where each shard build ran (node ids)
        self.rebuilt_shards = 0  # shards built again on a node that lacked them
        self._group_hosts: dict[str, GroupHost] = {}  # rendezvous -> its store, while it runs
        self.follow_cluster = bool(follow_cluster)
        self.rebalance = bool(rebalance)
        self.shared_validation = check_bool("shared_validation", shared_validation)
        self._validation_of: dict[int, set[int]] = {}  # worker -> its actor's validation parts
        self._known_nodes: set[str] = set()  # nodes seen so far (follow_cluster)
        self._joining: list[str] = []  # nodes the next added workers are pinned to
        self._lost: list[int] = []  # workers whose node left, not yet reported

    # -- what the run reports ------------------------------------------------------
    @property
    def n_workers(self) -> int:
        return len(self._actors)

    @property
    def resident_shard_bytes(self) -> list[int]:
        return [info["nbytes"] for info in self._infos]

    @property
    def restarts(self) -> list[int]:
        """Deaths of each worker over the run (each one replaced)."""
        return list(self._budget.counts)

    @property
    def worker_nodes(self) -> list[str]:
        """The Ray node id each worker (and so its shards) lives on (its last, once it left)."""
        return [info["node"] for info in self._infos]

    @property
    def shard_paths(self) -> list[str]:
        """Where the workers opened their shards on their nodes (local copies when shipped
        or copied), worker by worker."""
        return [path for info in self._infos for _, path in sorted(info["paths"].items())]

    @property
    def devices(self) -> list[str]:
        """Where each worker trains: 'cpu', or 'cuda' for a worker given a GPU."""
        return [info["device"] for info in self._infos]

    @property
    def pids(self) -> list[int]:
        return [info["pid"] for info in self._infos]

    @property
    def moved_shard_bytes(self) -> int:
        return self.shipped_bytes + self.copied_bytes

    def shard_bytes_per_node(self) -> dict[str, int]:
        per_node: dict[str, int] = {}
        for info in self._infos:
            per_node[info["node"]] = per_node.get(info["node"], 0) + info["nbytes"]
        return per_node

    # -- layout --------------------------------------------------------------------
    def prepare(self, n_workers: int) -> None:
        self._n_planned = n_workers

    def holdings(
        self, shards: Sequence[ShardInfo], n_workers: int | None = None
    ) -> tuple[tuple[int, ...], ...]:
        n = n_workers or len(shards)
        return replicated_holdings(n, self.replication(n), len(shards))

    def replication(self, n_workers: int) -> int:
        return min(self.replicas, n_workers)

    # -- life cycle ----------------------------------------------------------------
    def build_shards(self, builds: Sequence[Callable[[], Any]]) -> list[Any] | None:
        """Build the shards as Ray tasks, in parallel across the cluster: anywhere when
        every node reads the run directory (``data="path"``, a one-node cluster), else
        (``"auto"``, several nodes) each shard on the node its owner will be placed on."""
        if self.data == "ship":
            return None
        self._ray = ray = import_ray()
        self._connect()
        n_workers = self._n_planned or len(builds)
        homes = self._choose_homes(n_workers) if self.data == "auto" else {}
        owners = {
            s: w for w, owned in enumerate(home_holdings(n_workers, len(builds))) for s in owned
        }
        blobs = [cloudpickle.dumps(build) for build in builds]
        # A task whose process dies (killed, a lost node) runs again: a build rewrites
        # its shard's files from scratch. An exception it raises is not retried.
        task = ray.remote(num_cpus=1, max_retries=_BUILD_RETRIES)(_run_build)
        refs = [
            task.options(
                scheduling_strategy=self._on(homes[owners[s]]) if homes else "DEFAULT"
            ).remote(blob)
            for s, blob in enumerate(blobs)
        ]
        try:
            done = ray.get(refs)
        except Exception as e:  # e.g. a node cannot read the source, or import its module
            warnings.warn(
                f"building the shards on the Ray cluster failed ({type(e).__name__}: {e}); "
                "building them in this process instead"
                + (" (to be shipped to the nodes)" if homes else ""),
                stacklevel=2,
            )
            return None
        self.build_nodes = [node for node, _ in done]
        if homes:  # the workers go where their shards are, and can build them again
            self._homes, self._builds = homes, dict(enumerate(blobs))
        return [result for _, result in done]

    def _choose_homes(self, n_workers: int) -> dict[int, str]:
        """Nodes for the workers when the cluster has several that can host one (round
        robin over them, in node-id order); none on a one-node cluster."""
        nodes = sorted(
            n["NodeID"] for n in self._ray.nodes() if n.get("Alive") and self._fits(n["Resources"])
        )
        if len(nodes) < 2:
            return {}
        return {w: nodes[w % len(nodes)] for w in range(n_workers)}

    def release_shards(self) -> None:
        """Delete the shards built on the nodes (the driver deletes its own folder): each
        live actor deletes those built on its node."""
        if not self._builds or self._ray is None:
            return
        ray = self._ray
        on_node: dict[str, list[str]] = {}
        for shard in self._builds:
            node = self.build_nodes[shard] if shard < len(self.build_nodes) else None
            if node is not None and shard < len(self._shards):
                on_node.setdefault(node, []).append(str(self._shards[shard].path))
        done = []
        for worker, actor in enumerate(self._actors):
            if actor is not None and (paths := on_node.pop(self._infos[worker]["node"], None)):
                done.append(actor.discard.remote(paths))
        with contextlib.suppress(Exception):  # a dead actor's node lost its copy already
            ray.wait(done, num_returns=len(done), timeout=30)

    # -- data-parallel groups: the members meet through a store the driver serves ---------
    groups = True

    def group_rendezvous(self) -> str:
        host = GroupHost(import_ray().util.get_node_ip_address())
        self._group_hosts[host.rendezvous] = host
        return host.rendezvous

    def abort_group(self, rendezvous: str) -> None:
        if (host := self._group_hosts.get(rendezvous)) is not None:
            host.abort()

    def end_group(self, rendezvous: str) -> None:
        self._group_hosts.pop(rendezvous, None)

    def start(
        self, shards: Sequence[ShardInfo], factory: Callable[..., Any], n_workers: int | None = None
    ) -> None:
        self._refuse_second_start(bool(self._actors))
        self._ray = ray = import_ray()
        self._connect()
        self._actor_class = ray.remote(
            max_restarts=0, max_task_retries=0, concurrency_groups={_COPY_GROUP: 1}
        )(_ShardActor)
        self._shards = list(shards)
        self._factory_blob = _pickle_factory(factory)
        n = n_workers or len(shards)
        self._held = list(self.holdings(shards, n))
        self._home = list(home_holdings(n, len(shards)))
        self._budget = RestartBudget(n, self.max_restarts, self.restart_window)
        self._infos = []
        self._known_nodes = self._alive_nodes()
        self._actors = [None] * n
        for worker in range(n):
            self._new_actor(worker)
        self._infos = self._start_actors(list(range(n)))

    # -- workers joining and leaving -------------------------------------------------------
    elastic = True

    def add_worker(self, held: Sequence[int], home: Sequence[int]) -> int:
        """A new actor on a node that joined (``pool_changes``), else where the cluster has
        room, holding ``held``: copied from actors that hold them where its node cannot
        read them."""
        worker = len(self._actors)
        if self._joining:
            self._homes[worker] = self._joining.pop(0)
        self._held.append(tuple(sorted(held)))
        self._home.append(tuple(sorted(home)))
        self._budget.add_worker()
        self._actors.append(None)
        self._new_actor(worker)
        self._infos.append(self._start_actors([worker])[0])
        return worker

    def rehome(self, worker: int, held: Sequence[int], home: Sequence[int]) -> None:
        self._refuse_busy(worker, self._busy[worker][0] if worker in self._busy else None)
        self._held[worker], self._home[worker] = tuple(sorted(held)), tuple(sorted(home))
        (info,) = self._hold([worker])
        if info is None:  # it died: a new actor opens what it now holds
            self._replace(worker)
        else:
            self._infos[worker] = info

    def remove_worker(self, worker: int) -> None:
        self._refuse_busy(worker, self._busy[worker][0] if worker in self._busy else None)
        actor = self._actors[worker]
        self._lose(worker)
        if actor is None:  # lost with its node: nothing left to stop
            return
        with contextlib.suppress(Exception):  # already dead: nothing to clean up
            self._ray.get(actor.close.remote(), timeout=10)
        with contextlib.suppress(Exception):
            self._ray.kill(actor)

    def _lose(self, worker: int) -> None:
        """The worker holds nothing and has no actor from now on."""
        self._actors[worker] = None
        self._held[worker] = self._home[worker] = ()
        self._answered.discard(worker)
        self._opened_by.pop(worker, None)
        self._validation_of.pop(worker, None)
        self._infos[worker] = {**self._infos[worker], "nbytes": 0, "paths": {}}

    def pool_changes(self) -> PoolChanges:
        """With ``follow_cluster``: a worker per resource share of each node that joined
        since the last call, and the workers whose node left (found here, or by a visit
        that crashed with it)."""
        if not self.follow_cluster or self._ray is None:
            return PoolChanges()
        nodes = {n["NodeID"]: n for n in self._ray.nodes() if n.get("Alive")}
        for worker, actor in enumerate(self._actors):
            gone = actor is not None and self._infos[worker]["node"] not in nodes
            if gone and worker not in self._busy:  # a busy one reports itself crashed
                self._lose(worker)
                self._lost.append(worker)
        add = 0
        for node_id in sorted(set(nodes) - self._known_nodes):
            self._known_nodes.add(node_id)
            fits = self._fits(nodes[node_id]["Resources"])
            self._joining += [node_id] * fits
            add += fits
        lost, self._lost = tuple(self._lost), []
        return PoolChanges(add, lost)

    def _fits(self, resources: Mapping[str, float]) -> int:
        """How many workers a node with these resources hosts."""
        need = {"CPU": 1.0, **{k: float(v) for k, v in self.resources.items()}}
        return min(
            (int(resources.get(name, 0.0) // amount) for name, amount in need.items() if amount),
            default=0,
        )

    def _alive_nodes(self) -> set[str]:
        return {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}

    def _start_actors(self, workers: list[int], mst_id: int | None = None) -> list[dict[str, Any]]:
        """Each new actor opens its shards; one that dies meanwhile is created again, within
        its restart budget, on the node its predecessor was placed by."""
        infos: dict[int, dict[str, Any]] = {}
        pending = workers
        while pending:
            opened = self._hold(pending)
            infos.update((w, info) for w, info in zip(pending, opened, strict=True) if info)
            pending = [w for w, info in zip(pending, opened, strict=True) if info is None]
            for worker in pending:  # it died while starting
                self._count_death(worker, mst_id)
                self._new_actor(worker)
        return [infos[w] for w in workers]

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return  # the caller's cluster connection: use it, leave it up
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
        address = self.address
        if address is None and not os.environ.get("RAY_ADDRESS"):
            # Ray's own None joins the last cluster `ray start` named in
            # /tmp/ray/ray_current_cluster, even one long dead (it then hangs).
            address = "local"
        if address != "local":
            kwargs.pop("include_dashboard")  # joining a cluster: its head decides
        kwargs.update(self.init_kwargs)
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:
            where = self.address or "a new local Ray instance"
            raise ExecutorError(
                f"cannot start or join Ray at {where}: {e}; for a cluster, start it with "
                "'ray start --head' and pass address='auto' (or 'ray://HEAD:10001')"
            ) from e
        self._owns_ray = True

    def _new_actor(self, worker: int) -> None:
        """A new actor for ``worker`` (it has no shard open yet), placed by ``_placement``."""
        self._actors[worker] = self._create(worker, self._placement(worker))
        self._opened_by[worker] = {}
        self._answered.discard(worker)
        self._validation_of[worker] = set()

    def _create(self, worker: int, strategy: Any) -> Any:
        resources = {k: v for k, v in self.resources.items() if k not in ("CPU", "GPU")}
        return self._actor_class.options(
            num_cpus=self.resources.get("CPU", 1),
            num_gpus=self.resources.get("GPU", 0),
            resources=resources or None,
            scheduling_strategy=strategy,
            name=None,
        ).remote(
            worker, len(self._shards), self._factory_blob, self.threads_per_worker,
            self.materialise, self.shared_validation,
        )  # fmt: skip

    def _hold(self, workers: list[int]) -> list[dict[str, Any] | None]:
        """Each worker's actor holds the shards ``_held`` names (see ``_sources``); None
        for an actor that died meanwhile. A shard whose copy failed (the actor it came
        from died) is asked for again from elsewhere: another holder, its build, or the
        driver's files."""
        opened: dict[int, dict[str, Any] | None] = {}
        pending, failed = list(workers), set[int]()
        while pending:
            readable = self._readable(pending)
            asked = [w for w in pending if readable[w] is not None]  # others' actors are dead
            sources = {w: self._sources(w, readable[w] or {}, failed) for w in asked}
            refs = [self._actors[w].hold.remote(sources[w], list(self._home[w])) for w in asked]
            opened.update(zip(asked, self._get(refs, "open their shards"), strict=True))
            pending = []
            for worker in asked:
                if (info := opened[worker]) is None:
                    continue
                self._opened_by[worker] = info["paths"]
                self._answered.add(worker)
                self._validation_of[worker] = set(info["validation"])
                self.rebuilt_shards += info["built"]
                copied_from = {s.index: s.source for s in sources[worker] if s.source is not None}
                missing = set(info["missing"])
                self.copied_bytes += sum(
                    self._shards[i].nbytes for i in copied_from if i not in missing
                )
                if missing:
                    if not missing <= copied_from.keys():
                        raise ExecutorError(
                            f"worker {worker} could not get shard(s) {sorted(missing)} "
                            "the driver sent it; the Ray object store lost them"
                        )
                    failed.update(copied_from[i] for i in missing)
                    pending.append(worker)
        if self.shared_validation:  # once the shards are open: their holders serve copies
            dead = self._share_validation([w for w in workers if opened.get(w) is not None])
            opened.update(dict.fromkeys(dead))
        return [opened.get(w) for w in workers]

    def _share_validation(self, workers: list[int]) -> set[int]:
        """Each worker's actor gets the validation part of every shard it does not hold
        (``_validation_sources``), asked again from elsewhere where a copy failed; the
        workers whose actor died meanwhile."""
        dead, failed = set[int](), set[int]()
        pending = list(workers)
        while pending:
            unheld = {w: self._unheld(w) for w in pending}
            readable = self._node_reads(
                {w: [s for s in unheld[w] if s not in self._validation_of[w]] for w in pending}
            )
            dead.update(w for w in pending if readable[w] is None)
            asked = [w for w in pending if readable[w] is not None]
            sources = {w: self._validation_sources(w, readable[w] or {}, failed) for w in asked}
            refs = [self._actors[w].see_validation.remote(sources[w]) for w in asked]
            pending = []
            for worker, info in zip(asked, self._get(refs, "open validation parts"), strict=True):
                if info is None:
                    dead.add(worker)
                    continue
                self._validation_of[worker] = set(info["validation"])
                self.copied_bytes += info["copied_bytes"]
                if info["missing"]:
                    copied_from = {
                        s.index: s.source for s in sources[worker] if s.source is not None
                    }
                    if not set(info["missing"]) <= copied_from.keys():
                        raise ExecutorError(
                            f"worker {worker} could not get the validation part(s) of shard(s) "
                            f"{sorted(info['missing'])} the driver sent it; the Ray object "
                            "store lost them"
                        )
                    failed.update(copied_from[i] for i in info["missing"])
                    pending.append(worker)
        return dead

    def _unheld(self, worker: int) -> list[int]:
        return [s for s in range(len(self._shards)) if s not in self._held[worker]]

    def _validation_sources(
        self, worker: int, readable: dict[int, bool], failed: set[int]
    ) -> list[_Source]:
        """Where the worker's actor gets the validation part of each shard it does not
        hold: the one it has, its path on the node, a copy from an actor holding the
        shard, or the driver's files, in that order of preference."""
        sources = []
        for shard in self._unheld(worker):
            path = str(self._shards[shard].path)
            if shard in self._validation_of[worker] or readable.get(shard):
                sources.append(_Source(shard, path))
            elif (holder := self._holder(shard, worker, failed)) is not None:
                copy = self._actors[holder].validation_files.options(concurrency_group=_COPY_GROUP)
                sources.append(_Source(shard, path, files=copy.remote(shard), source=holder))
            else:
                files = _driver_files(path, validation_files)
                self.shipped_bytes += sum(len(b) for b in files.values())
                sources.append(_Source(shard, path, files=self._ray.put(files)))
        return sources

    def _readable(self, workers: list[int]) -> dict[int, dict[int, bool] | None]:
        """Which of its shards each worker's node reads in place (None: the actor is dead)."""
        return self._node_reads(
            {w: [s for s in self._held[w] if s not in self._opened_by[w]] for w in workers}
        )

    def _node_reads(self, wanted: dict[int, list[int]]) -> dict[int, dict[int, bool] | None]:
        """Of the shards ``wanted`` names by worker, those its node reads in place (None:
        the worker's actor is dead)."""
        if self.data != "auto":
            return {w: {s: self.data == "path" for s in shards} for w, shards in wanted.items()}
        workers = list(wanted)
        checks = [
            self._actors[w].can_read.remote([str(self._shards[s].path) for s in wanted[w]])
            for w in workers
        ]
        answers = self._get(checks, "check their shard paths")
        return {
            w: None if ok is None else dict(zip(wanted[w], ok, strict=True))
            for w, ok in zip(workers, answers, strict=True)
        }

    def _holder(self, shard: int, worker: int, failed: set[int]) -> int | None:
        """A worker other than ``worker`` whose live actor has ``shard`` open (an idle one
        if any: a busy one reads it out beside its visit), not one a copy failed from."""
        holders = [
            w for w, opened in self._opened_by.items()
            if w != worker and w not in failed and shard in opened and self._actors[w] is not None
        ]  # fmt: skip
        holders.sort(key=lambda w: (w in self._busy, w))
        return holders[0] if holders else None

    def _sources(
        self, worker: int, readable: dict[int, bool], failed: set[int] | None = None
    ) -> list[_Source]:
        """Where the worker's actor gets each shard it holds: open already, its path on the
        node, a copy from another actor holding it, its build (run there), or the driver's
        files, in that order of preference."""
        sources = []
        for shard in self._held[worker]:
            path = str(self._shards[shard].path)
            if shard in self._opened_by[worker] or readable.get(shard):
                sources.append(_Source(shard, path))
            elif (holder := self._holder(shard, worker, failed or set())) is not None:
                copy = self._actors[holder].shard_files.options(concurrency_group=_COPY_GROUP)
                files = copy.remote(shard)
                sources.append(_Source(shard, path, files=files, source=holder))
            elif shard in self._builds:  # built for a node that is gone: build it there
                sources.append(_Source(shard, path, build=self._builds[shard]))
            else:
                files = _driver_files(path, _shard_files)
                self.shipped_bytes += sum(len(b) for b in files.values())
                sources.append(_Source(shard, path, files=self._ray.put(files)))
        return sources

    def _get(self, refs: list[Any], doing: str) -> list[Any]:
        """The values of refs made by new actors; None for an actor that died meanwhile."""
        ray = self._ray
        if not refs:
            return []
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout)
        if pending:
            raise ExecutorError(
                f"{len(pending)} of {len(refs)} Ray workers did not {doing} within "
                f"{self.start_timeout:.0f} s; each needs {self.resources} and the cluster has "
                f"{ray.available_resources()} free; lower resources_per_worker, use fewer "
                "workers, or add nodes"
            )
        values = []
        for ref in refs:
            try:
                values.append(ray.get(ref))
            except Exception as e:
                killed = isinstance(e, ray.exceptions.RayActorError) and not e.actor_init_failed
                if not killed:  # it failed to start: starting it again would fail the same way
                    raise ExecutorError(
                        f"a Ray worker could not start: {e}\nIf make_estimator lives in a "
                        "module, every node must be able to import it (install it there or use "
                        "a runtime_env)"
                    ) from e
                values.append(None)  # died while starting: the caller starts it again
        return values

    # -- visits --------------------------------------------------------------------
    def submit(self, worker: int, task: VisitTask) -> None:
        self._refuse_busy(worker, self._busy[worker][0] if worker in self._busy else None)
        state, init = (_as_arg(s) for s in (task.state, task.init_state))
        bare = dataclasses.replace(task, state=None, init_state=None)
        meta, out = self._actors[worker].run.options(num_returns=2).remote(bare, state, init)
        self._busy[worker] = (task.mst_id, meta, out)

    def wait(self) -> list[VisitResult]:
        self._refuse_idle_wait(len(self._busy))
        ray = self._ray
        by_ref = {meta: worker for worker, (_, meta, _) in self._busy.items()}
        ray.wait(list(by_ref), num_returns=1)
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        return [self._collect(by_ref[ref]) for ref in sorted(ready, key=by_ref.__getitem__)]

    def _collect(self, worker: int) -> VisitResult:
        ray = self._ray
        mst_id, meta_ref, state_ref = self._busy.pop(worker)
        try:
            meta = ray.get(meta_ref)
        except ray.exceptions.ObjectLostError:
            # The state this visit needed lived on a node that is gone.
            return VisitResult(worker, mst_id, crashed=True, state_lost=True)
        except ray.exceptions.RayActorError:
            self._replace(worker, mst_id)
            return VisitResult(worker, mst_id, crashed=True)
        if meta.error is not None or not meta.state_nbytes:
            return meta
        return dataclasses.replace(meta, state=_RayState(state_ref, meta.state_nbytes))

    def _replace(self, worker: int, mst_id: int | None = None) -> None:
        """A new actor for a dead one: on the same node if it is alive, else anywhere (with
        ``follow_cluster``: none, the worker leaves with its node)."""
        if self.follow_cluster and self._infos[worker]["node"] not in self._alive_nodes():
            self._lose(worker)
            self._lost.append(worker)
            return
        self._count_death(worker, mst_id)
        self._new_actor(worker)
        self._infos[worker] = self._start_actors([worker], mst_id)[0]

    def _count_death(self, worker: int, mst_id: int | None) -> None:
        if crash_loop := self._budget.died(worker):
            doing = f" while running MST {mst_id}" if mst_id is not None else ""
            raise ExecutorError(
                f"Ray worker {worker} died{doing}{crash_loop}; if it was killed for memory, use "
                f"fewer workers or smaller batches; {self._budget.fix('RayExecutor')}"
            )

    def _placement(self, worker: int) -> Any:
        """The node of the worker's last actor (before it has one: the node its shards were
        built on, if any) while that node is alive, else any node with room."""
        if worker < len(self._infos):
            node: str | None = self._infos[worker]["node"]
        else:  # starting: never placed yet
            node = self._homes.get(worker)
        if node is not None and node in self._alive_nodes():
            return self._on(node)
        return "SPREAD"  # no home, or it is gone: re-materialise the shards elsewhere

    @staticmethod
    def _on(node: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=node, soft=False)

    def shutdown(self) -> None:
        ray = self._ray
        if ray is None:
            return
        actors = [actor for actor in self._actors if actor is not None]
        if ray.is_initialized():
            # Only idle actors that started can close now: a close() sent to one that never
            # started (no room on the cluster) or is mid-visit would wait out the timeout.
            # Their local copies are swept by the next actor on their node.
            idle = self._answered - self._busy.keys()  # each has its actor (``_lose`` drops it)
            closing = [self._actors[w].close.remote() for w in idle]
            with contextlib.suppress(Exception):  # a dead actor has nothing to clean up
                ray.wait(closing, num_returns=len(closing), timeout=10)
            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception:  # already dead: nothing to stop
                    pass
        self._actors = []
        self._opened_by.clear()
        self._busy.clear()
        self._answered.clear()
        self._group_hosts.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        self._ray = None


def _as_arg(state: Any) -> Any:
    """A reference goes to the actor as is (Ray fetches it there); bytes go by value."""
    return state.ref if isinstance(state, _RayState) else state


def wait_for_nodes(n_nodes: int, timeout: float = 60.0) -> None:
    """Block until the connected cluster shows ``n_nodes`` alive nodes (tests, benchmarks)."""
    ray = import_ray()
    deadline = time.monotonic() + timeout
    while sum(1 for n in ray.nodes() if n.get("Alive")) < n_nodes:
        if time.monotonic() > deadline:
            raise ExecutorError(f"the Ray cluster did not reach {n_nodes} nodes in {timeout} s")
        time.sleep(0.2)
