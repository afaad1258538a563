"""The executor interface: owns workers and their shards, runs visits, moves state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from modelhopper._vocabulary import Step
from modelhopper.data._sharding import ShardInfo
from modelhopper.errors import ConfigError, ExecutorError
from modelhopper.estimator import PassResult
from modelhopper.executors._group import GroupSpec
from modelhopper.scheduling import home_holdings

__all__ = [
    "BaseExecutor",
    "PoolChanges",
    "State",
    "StateSource",
    "StateLostError",
    "StateRef",
    "StepOutcome",
    "VisitResult",
    "VisitTask",
    "state_bytes",
    "state_nbytes",
]


class StateLostError(ExecutorError):
    """A state held by the executor is gone (a Ray object whose node died) before the
    driver could save it."""


class StateRef(ABC):
    """An MST's serialised state held by the executor, not by the driver.

    Executors whose workers pass state to each other directly (Ray's object
    store, files in shared memory) hand the driver this reference instead of
    the bytes: the next visit gets the reference, and the bytes go worker to
    worker. The driver fetches them only to write a checkpoint.
    """

    nbytes: int
    lost_with_worker: bool = True  # a Ray object dies with its node: record it at once

    @abstractmethod
    def fetch(self) -> bytes:
        """The state's bytes, copied to the caller."""


State = bytes | StateRef


def state_nbytes(state: State) -> int:
    return state.nbytes if isinstance(state, StateRef) else len(state)


def state_bytes(state: State) -> bytes:
    return state.fetch() if isinstance(state, StateRef) else state


class StateSource(StrEnum):
    """Where a visit's worker gets the MST's state from."""

    FRESH = "fresh"  # none yet: build the MST from its params and seed
    HELD = "held"  # the worker ran the MST's last visit and still holds it: no hop
    SENT = "sent"  # the task carries it (a hop)


@dataclass(frozen=True)
class VisitTask:
    """One MST's visit to one worker; ``state`` is the MST's state when ``source`` is SENT
    (a transport such as Ray's may carry it beside the task until the worker has it)."""

    mst_id: int
    params: dict[str, Any]
    seed: int
    steps: tuple[Step, ...]
    source: StateSource
    state: State | None = None
    init_state: State | None = None  # a fresh MST's starting weights (a warm-started clone)
    # Set when the visit is one member's share of a data-parallel group epoch (hybrid mode):
    # its training steps are the shards this member trains on, all in one epoch.
    group: GroupSpec | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.source is not StateSource.SENT:
            raise ValueError(f"a {self.source.value!r} visit task carries no state")
        if self.init_state is not None and self.source is not StateSource.FRESH:
            raise ValueError("only a fresh MST starts from init_state")


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    result: PassResult


@dataclass(frozen=True)
class VisitResult:
    worker: int
    mst_id: int
    outcomes: tuple[StepOutcome, ...] = ()
    state: State | None = None
    error: str | None = None  # set when the MST failed during this visit
    crashed: bool = False  # the worker died mid-visit (it was replaced); re-run the visit
    state_lost: bool = False  # with crashed: the state this visit got is gone; reload it
    traceback: str | None = None
    busy_seconds: float = 0.0  # the whole visit on the worker, state handling included
    # Bytes of the state this visit produced, where the state travels apart from this
    # result (Ray: a second object; the result is sent with ``state=None``).
    state_nbytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # A visit that ran through several epochs (chained): the state each earlier epoch
    # evaluated, by epoch, for its best-epoch checkpoint; ``state`` is the last one's.
    epoch_states: tuple[tuple[int, bytes], ...] = ()
    # The visit trained nothing (evaluations only): the MST's state is the one the visit
    # started from, which the driver has, so none is sent back (``state`` is None).
    state_unchanged: bool = False


@dataclass(frozen=True)
class PoolChanges:
    """What changed in an executor's pool outside the run (``BaseExecutor.pool_changes``):
    ``add`` workers could join (room appeared, e.g. a node joined the cluster), and the
    workers in ``lost`` are gone for good (their node left) and must leave the run."""

    add: int = 0
    lost: tuple[int, ...] = ()


class BaseExecutor(ABC):
    """Runs visits on ``n_workers`` workers, worker ``w`` owning the shards
    ``home_holdings`` gives it (shard ``w`` when there is one shard per worker)."""

    def prepare(self, n_workers: int) -> None:  # noqa: B027 - optional, most need nothing
        """Called before the data is sharded: begin slow start-up work (no shard exists yet)."""

    def build_shards(self, builds: Sequence[Callable[[], Any]]) -> list[Any] | None:
        """Run shard builds (one per shard, each writes its whole shard and returns its
        ``BuiltShard``) in parallel where the workers can read what they write; None
        leaves them to the driver, which runs them in threads (a local executor shares
        the driver's disk)."""
        return None

    def check_layout(self, n_workers: int, n_shards: int) -> None:  # noqa: B027 - most run any
        """Raise a ConfigError, before anything starts, if this executor cannot run
        ``n_workers`` workers over ``n_shards`` shards (``n_shards >= n_workers``)."""

    # Whether every worker can evaluate every shard's validation part (not only its own
    # shards'): an epoch is then evaluated where its training ends (MOPScheduler).
    shared_validation: bool = False

    # -- data-parallel groups (hybrid mode) ---------------------------------------------
    groups: bool = False  # whether visits may carry a GroupSpec

    @property
    def group_shared_memory(self) -> bool:
        """Whether a group's members share this host's memory (see ``_group``)."""
        return False

    def check_hybrid(self, hybrid: str) -> None:
        """Raise a ConfigError, before anything starts, if the run wants groups
        (``hybrid`` not 'off') and this executor cannot run them."""
        if hybrid != "off" and not self.groups:
            raise self._no_groups()

    def group_rendezvous(self) -> str:
        """A new rendezvous for one group visit's members (a file they can all reach)."""
        raise self._no_groups()

    def abort_group(self, rendezvous: str) -> None:
        """A member of the group meeting at ``rendezvous`` was lost: members still waiting
        for it to join give up (those already joined fail at their next all-reduce)."""
        raise self._no_groups()

    def end_group(self, rendezvous: str) -> None:  # noqa: B027 - most keep nothing per group
        """Every member of the group meeting at ``rendezvous`` has reported: release it."""

    def _no_groups(self) -> ConfigError:
        return ConfigError(
            f"{type(self).__name__} cannot train an MST data-parallel on a group of workers "
            "(hybrid='auto' or 'on'); use LocalExecutor, or hybrid='off'"
        )

    # -- workers joining and leaving a running run (elastic executors) -------------------
    elastic: bool = False  # whether add_worker / rehome / remove_worker work
    # Whether the driver moves shards to match measured worker speeds (logical shards,
    # an elastic executor): the executor's ``rebalance=True``.
    rebalance: bool = False

    def replication(self, n_workers: int) -> int:
        """How many of ``n_workers`` workers hold each shard (``holdings``' rule)."""
        return 1

    def add_worker(self, held: Sequence[int], home: Sequence[int]) -> int:
        """Start one more worker, holding shards ``held`` (owning ``home``); its number."""
        raise self._not_elastic()

    def rehome(self, worker: int, held: Sequence[int], home: Sequence[int]) -> None:
        """The idle ``worker`` holds shards ``held`` (owning ``home``) from now on."""
        raise self._not_elastic()

    def remove_worker(self, worker: int) -> None:
        """Stop the idle ``worker``: the run goes on without it."""
        raise self._not_elastic()

    def pool_changes(self) -> PoolChanges:
        """Workers to add and workers lost since the last call, for an executor whose pool
        follows something outside the run (RayExecutor(follow_cluster=True): the cluster's
        nodes). The driver asks between visits and whenever a visit crashed."""
        return PoolChanges()

    def _not_elastic(self) -> ConfigError:
        return ConfigError(
            f"{type(self).__name__} cannot add or remove workers while a run goes on; "
            "LocalExecutor can"
        )

    def release_shards(self) -> None:  # noqa: B027 - optional, most need nothing
        """The run completed and its shards are not kept: delete copies of them the
        executor made where the driver does not delete them (other nodes)."""

    def holdings(
        self, shards: Sequence[ShardInfo], n_workers: int | None = None
    ) -> tuple[tuple[int, ...], ...]:
        """The shards each of ``n_workers`` workers (default: one per shard) will hold
        (``start`` opens them): its own, and on an executor that replicates, others. The
        scheduler lets any holder of a shard run steps on it."""
        return home_holdings(n_workers or len(shards), len(shards))

    @abstractmethod
    def start(
        self, shards: Sequence[ShardInfo], factory: Callable[..., Any], n_workers: int | None = None
    ) -> None:
        """Start ``n_workers`` workers (default: one per shard); each opens the shards
        ``holdings`` gives it."""

    @abstractmethod
    def submit(self, worker: int, task: VisitTask) -> None:
        """Hand a visit to an idle worker."""

    @abstractmethod
    def wait(self) -> list[VisitResult]:
        """Block until at least one submitted visit finishes; return all that have."""

    def poll(self) -> list[VisitResult]:
        """The visits finished by now, without waiting (none if the executor cannot tell
        cheaply): the driver hands those workers their next visit while it records."""
        return []

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the workers; idempotent."""

    @property
    @abstractmethod
    def resident_shard_bytes(self) -> list[int]:
        """Bytes of shard data each worker holds."""

    @property
    def moved_shard_bytes(self) -> int:
        """Shard bytes sent to the workers' machines so far (shipped by the driver, copied
        between workers); 0 where every worker reads its shards where they lie."""
        return 0

    def __enter__(self) -> BaseExecutor:
        return self

    # -- the guards every executor applies, with the same messages -----------------------
    def _refuse_second_start(self, started: bool) -> None:
        if started:
            name = type(self).__name__
            raise ExecutorError(f"this {name} is already started; use a new one per run")

    @staticmethod
    def _refuse_busy(worker: int, busy_with: int | None) -> None:
        """``busy_with``: the MST the worker is running, or None if it is idle."""
        if busy_with is not None:
            raise ExecutorError(f"worker {worker} is busy with MST {busy_with}")

    @staticmethod
    def _refuse_idle_wait(n_in_flight: int) -> None:
        if not n_in_flight:
            raise ExecutorError("wait() with no visit in flight; submit one first")

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
