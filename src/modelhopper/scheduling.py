"""MOP scheduling: which MST visits which worker next.

The data is cut into ``n_shards`` shards (default: one per worker). Worker ``w``
owns the shards ``s`` with ``s % n_workers == w`` for the whole run (with one
shard per worker: shard ``w``), so placing an MST on a worker is choosing among
the shards it may train on next. More shards than workers (*logical shards*)
make the plan, and so every result, independent of how many workers run it. A
worker may also hold replicas of other workers' shards (``holdings``; small data
is replicated on every worker): then any holder of the shard an MST needs next
can take it, and one visit runs every consecutive step whose shard the worker
holds, so fewer visits (and hops) serve the same plan. Each MST follows a fixed
plan of steps, drawn from the seed: in every epoch it trains on every shard once
(the *train order*), then evaluates on every validation shard once (the *eval
order*). Fixing the plan up front is what makes results independent of timing:
the scheduler only decides *when* each step runs, never *what* it computes, so
the same seed gives the same metrics however fast the workers are, and a
resumed run finishes where an uninterrupted one would.

Consecutive steps on shards the worker holds form one *visit* (none after the
epoch's last evaluation, so a procedure can stop an MST before it trains
further). Where no procedure decides on epochs (grid, random search) and a worker
holds every shard, a visit may go on into the MST's next epochs while its
estimated length stays under ``chain_seconds``: one visit instead of several
short ones, each with its fixed cost. The eval order starts where training ended,
and the next epoch starts where evaluation ended, so that first visit usually
finds the state already on its worker; where no procedure decides, a visit that
only evaluated goes on into that training whatever the worker holds (one visit,
not an evaluation-only one and then a training one on the same worker).

Evaluation changes no state, so the order of an epoch's evaluations cannot change
a result: between its first and last evaluation (both fixed by the plan) an MST
takes its other validation shards in whatever order workers come free. Waiting for
the worker of one planned shard would delay every epoch's result by p - 2 waits,
which is what an asynchronous procedure decides on (measured on the LCBench
surrogate: bench/anytime.py). Training order stays fixed, unless
``train_order="any"``: then an MST trains each sub-epoch of an epoch on whichever
shard it has not yet trained on whose worker comes free first, as the original MOP
system did. No MST waits for one busy worker while another holding an unvisited
shard idles, but which shard came when depends on timing: each step records the
shard and its position in the order it actually ran, and a resumed run continues
that epoch with the shards not yet trained on.

The scheduler is pure logic over plain data: no processes, no clocks. It
holds no epoch barrier; MSTs at different epochs run side by side.
"""

from __future__ import annotations

import functools
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from modelhopper._checks import check_int
from modelhopper._pick_index import PickIndex, file_in
from modelhopper._vocabulary import Step, StepKind
from modelhopper.errors import ConfigError

__all__ = [
    "StepKind",
    "Step",
    "Visit",
    "SchedulingPolicy",
    "TrainOrder",
    "Hybrid",
    "MOPScheduler",
    "epoch_plan",
    "plan_order",
    "check_n_shards",
    "home_holdings",
    "PoolChange",
    "PoolEvent",
    "PoolStep",
    "plan_pool_change",
    "rehome",
    "take_pool_step",
    "replicated_holdings",
    "covering_group",
    "weighted_holdings",
    "makespan_lower_bound",
    "SimulationResult",
    "simulate",
]


@dataclass(frozen=True)
class Visit:
    """Steps an MST runs on one worker before it hops on. In a group epoch (hybrid mode)
    each member gets a visit naming the ``group`` (its members, leader first); the
    driver reports the group's visits back as one, on the leader, with all their steps."""

    mst_id: int
    worker: int
    steps: tuple[Step, ...]
    group: tuple[int, ...] = ()


class Hybrid(StrEnum):
    """When an MST trains an epoch data-parallel on a group of workers (``_take_group``)."""

    OFF = "off"  # MOP only: one worker at a time per MST
    # At an epoch's start, when fewer MSTs can run than half the workers and than twice the
    # MST's last group epoch's measured speed-up over one worker, and that is over 1
    # (untried: any).
    AUTO = "auto"
    ON = "on"  # every epoch of every MST (a run whose results depend on nothing timed)


class TrainOrder(StrEnum):
    FIXED = "fixed"  # drawn from the seed: results do not depend on timing
    ANY = "any"  # at run time, among the epoch's untrained shards: fewer waits


class SchedulingPolicy(StrEnum):
    RANDOM = "random"  # uniformly among eligible MSTs, as in the original Cerebro
    LONGEST_REMAINING = "longest_remaining"  # most remaining (measured) work first
    # The MST added first goes first: MSTs finish (and are decided on) early, one after
    # another, as on task-parallel workers, while later ones fill the gaps. Better for
    # anytime results (asynchronous procedures); LONGEST_REMAINING is for makespan.
    # An MST that only has its epoch's evaluations left goes before older ones.
    OLDEST_FIRST = "oldest_first"


def epoch_plan(
    epoch: int, start_shard: int, n_shards: int, seed: int
) -> tuple[list[int], list[int]]:
    """Train and eval shard orders of an MST's epoch; eval starts where training ended.

    Every MST follows the same seeded cycle of shards in a given epoch, each from
    its own starting point (a Latin-square-like plan): at any moment the MSTs
    want different shards, so an idle worker nearly always finds one to run.
    Independent random orders per MST leave ~14% of 256 workers idle (simulated).
    """
    cycle = [int(s) for s in np.random.default_rng([seed, epoch]).permutation(n_shards)]
    first = cycle.index(start_shard)
    train = [cycle[(first + i) % n_shards] for i in range(n_shards)]
    last = cycle.index(train[-1])
    evaluation = [cycle[(last + i) % n_shards] for i in range(n_shards)]
    return train, evaluation


def first_shard(mst_id: int, n_shards: int, seed: int) -> int:
    """Start shard of epoch 0: consecutive MST ids start on different workers."""
    return (mst_id + _first_shard_offset(n_shards, seed)) % n_shards


@functools.lru_cache(maxsize=64)
def _first_shard_offset(n_shards: int, seed: int) -> int:
    # Asked for every idle worker at every decision: a generator per call cost ~25 us.
    return int(np.random.default_rng([seed, n_shards]).integers(n_shards))


def makespan_lower_bound(work: np.ndarray) -> float:
    """No schedule beats ``max(total / p, longest MST, busiest shard)``.

    ``work[i, s]`` is the total time MST ``i`` spends on shard ``s``.
    """
    work = np.asarray(work, dtype=float)
    if work.size == 0:
        return 0.0
    n_workers = work.shape[1]
    return float(max(work.sum() / n_workers, work.sum(axis=1).max(), work.sum(axis=0).max()))


@dataclass(frozen=True)
class _GroupCost:
    """An MST's measured group epochs: ``alone``, an epoch's seconds on one worker (its
    own sub-epochs, else the members' compute added up), ``compute`` the members' compute
    added up (last group epoch), and ``waits``, the leader's all-reduce seconds by group
    size (the last epoch of each size measured)."""

    alone: float
    compute: float
    waits: tuple[tuple[int, float], ...]

    @property
    def largest(self) -> int:
        return max(k for k, _ in self.waits)

    def seconds(self, k: int) -> float:
        """The epoch's predicted wall time on a group of ``k``: compute shared out, plus
        the all-reduce (``allreduce``)."""
        return self.compute / k + self.allreduce(k)

    def allreduce(self, k: int) -> float:
        """All-reduce seconds on ``k`` members, taken as ``a + b (k - 1)``: through the
        origin from one size measured (in shared memory each member reads every other's
        gradients; a ring's latency steps grow as 2(k-1)), fitted (least squares, slope
        >= 0) once several sizes are (a ring's bandwidth term hardly grows with k)."""
        if len(self.waits) == 1:
            ((k0, w0),) = self.waits
            return w0 * (k - 1) / (k0 - 1)
        xs = np.array([k0 - 1 for k0, _ in self.waits], dtype=float)
        ws = np.array([w0 for _, w0 in self.waits])
        slope = max(0.0, float(np.polyfit(xs, ws, 1)[0]))
        return max(0.0, float(np.mean(ws - slope * xs)) + slope * (k - 1))


@dataclass
class _MSTState:
    mst_id: int
    pending: deque[Step]
    n_epochs: int
    next_start: int  # first shard of the epoch after the planned ones
    priority: int = 0
    running: bool = False
    stopped: bool = False
    held: bool = False  # waiting for a decision on its last epoch
    parked: tuple[int, ...] = ()  # the workers whose waiting sets hold it
    # Its last group epoch's speed-up over one worker (auto; None: none measured yet).
    group_speedup: float | None = None
    # What that epoch measured, to size the next group (``_group_plan``); None: untried.
    group_cost: _GroupCost | None = None
    # Running sums keep estimates O(1) per decision, even with 1,000s of MSTs.
    n_pending: dict[StepKind, int] = field(default_factory=lambda: dict.fromkeys(StepKind, 0))
    sum_seconds: dict[StepKind, float] = field(default_factory=lambda: dict.fromkeys(StepKind, 0.0))
    n_seconds: dict[StepKind, int] = field(default_factory=lambda: dict.fromkeys(StepKind, 0))


def _mst_id(state: _MSTState) -> int:
    return state.mst_id


_KINDS = tuple(StepKind)  # iterating the enum itself costs more, once per MST per visit


def _work_left(state: _MSTState, fallback: Mapping[StepKind, float]) -> float:
    """Estimated seconds of an MST's pending steps: per kind, its own mean step time so
    far, else ``fallback``'s (the mean over all MSTs)."""
    work = 0.0
    for kind in _KINDS:
        n = state.n_seconds[kind]
        work += state.n_pending[kind] * (state.sum_seconds[kind] / n if n else fallback[kind])
    return work


def _evaluates_next(state: _MSTState) -> bool:
    return bool(state.pending) and state.pending[0].kind is StepKind.EVAL


def _work_parts(state: _MSTState) -> tuple[tuple, float, bool]:
    """How ``PickIndex`` files an MST for longest remaining work first: its group
    (priority, and the pending steps of each kind it has not measured, whose term is
    the mean over all MSTs), its measured part (``_work_left``'s sum over the kinds it
    has measured: the same operations in the same order), and whether rounding can tie
    different measured parts of the group: only where a measured and an unmeasured
    term are added (with every kind measured the measured part is the work itself; with
    none, the group's work is one). With two kinds the work is then one rounded sum of
    the measured part and a term the group shares, so it cannot decrease as the measured
    part grows (a test keeps there being two kinds)."""
    pattern: list[int | None] = []
    measured = 0.0
    for kind in _KINDS:
        n = state.n_seconds[kind]
        if n:
            measured += state.n_pending[kind] * (state.sum_seconds[kind] / n)
            pattern.append(None)
        else:
            pattern.append(state.n_pending[kind])
    n_unmeasured = sum(count is not None for count in pattern)
    return (state.priority, tuple(pattern)), measured, 0 < n_unmeasured < len(_KINDS)


class MOPScheduler:
    """Assigns (MST, worker) visits whenever workers are idle.

    Invariants: an MST is on at most one worker (or one group), a worker runs at most
    one visit, and each epoch of an MST trains and evaluates on every shard once.
    ``n_shards`` (default ``n_workers``, at least that many) is what the plan is
    made of; ``holdings[w]`` lists the shards worker ``w`` holds (default:
    ``home_holdings``). The plan depends on neither the workers nor what they
    hold, only which worker runs which steps.
    ``chain_seconds`` > 0 lets a visit run on past an epoch's end while the steps it
    took are estimated (from measured step times) to last less than that, or while it
    has only evaluated (see ``_chains``).
    ``train_order="any"`` lets each epoch's training take its shards in the order
    workers come free (see the module).
    ``hybrid`` (``Hybrid``) lets an MST train a whole epoch on a group of every worker
    that holds shards, data-parallel (``_take_group``); while an MST waits for its
    group, the idle workers wait with it.
    ``shared_validation``: every worker in the pool can evaluate every shard's
    validation part (the executor lets it read them), so an epoch is evaluated whole
    in the visit that ends its training, with no walk through the other workers.
    """

    def __init__(
        self,
        n_workers: int,
        *,
        policy: SchedulingPolicy | str = SchedulingPolicy.LONGEST_REMAINING,
        seed: int = 0,
        holdings: Sequence[Iterable[int]] | None = None,
        chain_seconds: float = 0.0,
        n_shards: int | None = None,
        train_order: TrainOrder | str = TrainOrder.FIXED,
        hybrid: Hybrid | str = Hybrid.OFF,
        shared_validation: bool = False,
    ) -> None:
        check_int("n_workers", n_workers, example="n_workers=2")
        self.shared_validation = bool(shared_validation)
        self.train_order = parse_train_order(train_order)
        self.hybrid = parse_hybrid(hybrid)
        self.n_workers = n_workers
        self.n_shards = check_n_shards(n_shards, n_workers)
        self.chain_seconds = float(chain_seconds)
        self._held = _check_holdings(holdings, n_workers, self.n_shards)
        self._cover_of: object = None  # the holdings ``_cover`` was computed for
        self._cover: tuple[list[int], int] = ([], 2)
        self._holders = self._holders_of_shards()
        self._members = self._pool_members()
        self.policy = _parse_policy(policy)
        self.seed = seed
        self._rng = np.random.default_rng([seed, 7919])
        self._msts: dict[int, _MSTState] = {}
        self._busy: dict[int, int] = {}  # worker -> mst_id
        # MSTs ready to run, indexed by the workers that hold the shard they need next.
        self._waiting: list[set[int]] = [set() for _ in range(n_workers)]
        # Longest remaining work and oldest first: each waiting set indexed, so a pick is
        # not a pass over it (successive halving's first rung parks 1,000s of MSTs on each
        # worker). Random draws among all of them.
        self._indexes: list[PickIndex] | None = None
        if self.policy is not SchedulingPolicy.RANDOM:
            self._indexes = [PickIndex() for _ in range(n_workers)]
        self._n_parked = 0  # MSTs in some waiting set
        self._sum_seconds = dict.fromkeys(StepKind, 0.0)
        self._n_seconds = dict.fromkeys(StepKind, 0)
        # worker -> [sum over its training steps of seconds / the MST's mean so far, steps]
        self._worker_pace: dict[int, list[float]] = {}
        self.n_decisions = 0

    # -- registering work -------------------------------------------------
    def add_mst(self, mst_id: int, n_epochs: int, *, priority: int = 0) -> None:
        """Plan ``n_epochs`` epochs of a new MST."""
        if mst_id in self._msts:
            raise ConfigError(f"MST {mst_id} is already scheduled; give each MST a new id")
        start = first_shard(mst_id, self.n_shards, self.seed)
        self._msts[mst_id] = _MSTState(mst_id, deque(), 0, start, priority)
        self.extend(mst_id, n_epochs)

    def extend(self, mst_id: int, n_epochs: int) -> None:
        """Raise an MST's epoch budget to ``n_epochs`` (plans are prefix-stable)."""
        state = self._state(mst_id)
        if state.stopped:
            raise ConfigError(f"MST {mst_id} is stopped; resume it before extending it")
        self._unpark(state)
        for epoch in range(state.n_epochs, n_epochs):
            train, evaluation = epoch_plan(epoch, state.next_start, self.n_shards, self.seed)
            state.pending.extend(Step(StepKind.TRAIN, epoch, s, i) for i, s in enumerate(train))
            state.pending.extend(Step(StepKind.EVAL, epoch, s, i) for i, s in enumerate(evaluation))
            state.n_pending[StepKind.TRAIN] += len(train)
            state.n_pending[StepKind.EVAL] += len(evaluation)
            state.next_start = evaluation[-1]
        state.n_epochs = max(state.n_epochs, n_epochs)
        self._park(state)

    def mark_done(self, mst_id: int, steps: Iterable[Step]) -> None:
        """Drop planned steps that ran before (resuming a run); evaluations may have run
        in any order, so the steps are named, not counted."""
        state = self._state(mst_id)
        done = list(steps)
        if self.train_order is TrainOrder.ANY:
            self._adopt_training(state, [s for s in done if s.kind is StepKind.TRAIN])
        planned = set(state.pending)
        unplanned = [s for s in done if s not in planned]
        if unplanned or len(set(done)) != len(done):
            raise ConfigError(
                f"MST {mst_id} cannot mark {len(done)} steps done: "
                + (f"the {unplanned[0].kind} step of epoch {unplanned[0].epoch} on shard "
                   f"{unplanned[0].shard} is not among its planned steps" if unplanned
                   else "a step is named twice")
            )  # fmt: skip
        self._unpark(state)
        gone = set(done)
        state.pending = deque(s for s in state.pending if s not in gone)
        for step in done:
            state.n_pending[step.kind] -= 1
        self._park(state)

    def restart(self, mst_id: int, done: Iterable[Step]) -> None:
        """Plan the MST again with only ``done`` done, as a resumed run would: the steps it
        ran since (whose results were lost) run again. It must not be running."""
        old = self._state(mst_id)
        if old.running:
            raise RuntimeError(f"MST {mst_id} is running: restart it once its visit ends")
        self._unpark(old)
        del self._msts[mst_id]
        self.add_mst(mst_id, old.n_epochs, priority=old.priority)
        state = self._msts[mst_id]
        self._unpark(state)
        # What was measured stays measured: step times, and group sizes tried.
        state.group_speedup, state.group_cost = old.group_speedup, old.group_cost
        state.sum_seconds, state.n_seconds = old.sum_seconds, old.n_seconds
        state.stopped = old.stopped
        self._park(state)
        self.mark_done(mst_id, done)

    def stop(self, mst_id: int) -> None:
        """Give the MST no further visits (one in flight still completes)."""
        state = self._state(mst_id)
        self._unpark(state)
        state.stopped = True

    def resume(self, mst_id: int) -> None:
        """Undo ``stop``: the MST continues its remaining plan."""
        state = self._state(mst_id)
        state.stopped = False
        self._park(state)

    def keep_off_groups(self, mst_id: int) -> None:
        """Hybrid "auto": the MST trains on one worker from now on (it cannot in a group)."""
        state = self._state(mst_id)
        state.group_speedup, state.group_cost = 0.0, None

    def set_priority(self, mst_id: int, priority: int) -> None:
        state = self._state(mst_id)
        self._unpark(state)  # its place in the waiting sets' index changes
        state.priority = priority
        self._park(state)

    # -- workers joining and leaving (the plan never changes, only who can run it) --------
    def add_worker(self, shards: Iterable[int]) -> int:
        """A new worker, holding ``shards``; returns its number (the next unused one)."""
        worker = self.n_workers
        self.n_workers += 1
        self._held += (frozenset(),)
        self._waiting.append(set())
        if self._indexes is not None:
            self._indexes.append(PickIndex())
        self.set_holdings(worker, shards)
        return worker

    def set_holdings(self, worker: int, shards: Iterable[int]) -> None:
        """From now on ``worker`` holds ``shards`` (shards re-homed while the run goes on);
        every shard must keep a holder, and an idle worker may hold nothing (it leaves)."""
        held = frozenset(int(s) for s in shards)
        if not held <= set(range(self.n_shards)):
            raise ConfigError(f"shards {sorted(held)} are not all in 0..{self.n_shards - 1}")
        others = [h for w, h in enumerate(self._held) if w != worker]
        if orphans := set(range(self.n_shards)).difference(held, *others):
            raise ConfigError(f"no worker would hold shard(s) {sorted(orphans)}")
        if not held and worker in self._busy:
            raise ConfigError(f"worker {worker} is busy with MST {self._busy[worker]}")
        self._held = self._held[:worker] + (held,) + self._held[worker + 1 :]
        self._holders = self._holders_of_shards()
        self._members = self._pool_members()
        for state in self._msts.values():  # they wait where their next shards are held now
            self._unpark(state)
            self._park(state)

    def holdings(self) -> tuple[frozenset[int], ...]:
        """The shards each worker holds (an empty set: it left)."""
        return self._held

    def _pool_members(self) -> tuple[int, ...]:
        """The workers that hold shards (one that holds none has left the pool)."""
        return tuple(w for w in range(self.n_workers) if self._held[w])

    def _holders_of_shards(self) -> list[tuple[int, ...]]:
        """For each shard, the workers that hold it (from ``_held``)."""
        return [tuple(w for w in range(self.n_workers) if s in self._held[w])
                for s in range(self.n_shards)]  # fmt: skip

    def hold(self, mst_id: int) -> None:
        """No visit for the MST until ``unhold``: its epoch awaits the procedure's decision."""
        state = self._state(mst_id)
        self._unpark(state)
        state.held = True

    def unhold(self, mst_id: int) -> None:
        state = self._state(mst_id)
        state.held = False
        self._park(state)

    # -- the scheduling step ----------------------------------------------
    def assign(self, idle_workers: Iterable[int]) -> list[Visit]:
        """Pick at most one visit for each idle worker (in worker order)."""
        idle = sorted(set(idle_workers))
        for worker in idle:
            if worker in self._busy:
                raise ConfigError(f"worker {worker} is busy with MST {self._busy[worker]}")
        visits: list[Visit] = []
        if self.hybrid is not Hybrid.OFF:
            visits, idle = self._assign_group(idle)
        for worker in idle:
            chosen = self._choose(worker)
            if chosen is None:
                continue
            self._unpark(chosen)
            visits.append(self._take_visit(chosen, worker))
            chosen.running = True
            self._busy[worker] = chosen.mst_id
            self.n_decisions += 1
        return visits

    def complete(
        self,
        visit: Visit,
        step_seconds: Sequence[float] | None = None,
        *,
        allreduce_seconds: float = 0.0,
    ) -> None:
        """Record that a visit finished (with the seconds each of its steps took; a group's:
        its members' shares, and the seconds the leader waited in all-reduce)."""
        state = self._release(visit)
        if visit.group and step_seconds is not None:
            self._measure_group(state, visit, step_seconds, allreduce_seconds)
        elif step_seconds is not None:
            for step, seconds in zip(visit.steps, step_seconds, strict=True):
                self._time_worker(visit.worker, state, step.kind, float(seconds))
                state.sum_seconds[step.kind] += float(seconds)
                state.n_seconds[step.kind] += 1
                self._sum_seconds[step.kind] += float(seconds)
                self._n_seconds[step.kind] += 1
        self._park(state)

    def _time_worker(self, worker: int, state: _MSTState, kind: StepKind, seconds: float) -> None:
        """A training step's seconds against its MST's mean so far (on every worker that
        trained it: in MOP an MST visits them all): the worker's pace."""
        if kind is StepKind.TRAIN and state.n_seconds[kind] and state.sum_seconds[kind] > 0:
            pace = self._worker_pace.setdefault(worker, [0.0, 0])
            pace[0] += seconds / (state.sum_seconds[kind] / state.n_seconds[kind])
            pace[1] += 1

    def worker_speeds(self, workers: Sequence[int], min_steps: int = 8) -> list[float] | None:
        """Each of ``workers``' measured speed (1 / its mean pace: a worker twice as slow as
        the others measures about half theirs), None until each has ``min_steps`` timed
        training steps since ``reset_worker_speeds``."""
        paces = [self._worker_pace.get(w, [0.0, 0]) for w in workers]
        if any(n < min_steps or total <= 0 for total, n in paces):
            return None
        return [n / total for total, n in paces]

    def reset_worker_speeds(self) -> None:
        """Measure afresh (after shards moved to match the speeds measured so far)."""
        self._worker_pace.clear()

    def requeue(self, visit: Visit) -> None:
        """Put an interrupted visit's steps back at the front of its MST's plan."""
        state = self._release(visit)
        steps = sorted(visit.steps, key=plan_order) if visit.group else visit.steps
        state.pending.extendleft(reversed(steps))
        for step in visit.steps:
            state.n_pending[step.kind] += 1
        self._park(state)

    def fail(self, visit: Visit) -> None:
        """The MST failed during this visit: it gets no further visits."""
        self._release(visit)
        self.stop(visit.mst_id)

    # -- queries ----------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True when nothing runs and no runnable MST has steps left."""
        return not self._busy and not any(self._waiting)

    def is_busy(self, worker: int) -> bool:
        """Whether the worker is running a visit."""
        return worker in self._busy

    @property
    def n_waiting(self) -> int:
        """MSTs ready to run that wait for a worker holding their next shard (after
        ``assign``: for a busy one)."""
        return self._n_parked

    def first_shard_holders(self, mst_id: int) -> tuple[int, ...]:
        """The workers holding the shard a new MST ``mst_id``'s plan starts on (where it
        starts in a fixed train order)."""
        return self._holders[first_shard(mst_id, self.n_shards, self.seed)]

    def remaining_steps(self, mst_id: int) -> int:
        return len(self._state(mst_id).pending)

    def n_epochs(self, mst_id: int) -> int:
        return self._state(mst_id).n_epochs

    def is_running(self, mst_id: int) -> bool:
        return self._state(mst_id).running

    def is_stopped(self, mst_id: int) -> bool:
        return self._state(mst_id).stopped

    def remaining_work(self, mst_id: int) -> float:
        """Estimated seconds of work left for an MST, from measured step times."""
        return _work_left(self._state(mst_id), self._estimates_of_all())

    # -- internals --------------------------------------------------------
    def _state(self, mst_id: int) -> _MSTState:
        try:
            return self._msts[mst_id]
        except KeyError:
            raise ConfigError(
                f"MST {mst_id} is not scheduled; known MSTs: {sorted(self._msts)}"
            ) from None

    def _park(self, state: _MSTState) -> None:
        if not state.running and not state.stopped and not state.held and state.pending:
            state.parked = self._next_workers(state)
            for worker in state.parked:
                self._waiting[worker].add(state.mst_id)
            self._n_parked += bool(state.parked)
            if self._indexes is not None and state.parked:
                self._file(state, self._indexes)

    def _unpark(self, state: _MSTState) -> None:
        self._n_parked -= bool(state.parked)
        for worker in state.parked:
            self._waiting[worker].discard(state.mst_id)
            if self._indexes is not None:
                self._indexes[worker].discard(state.mst_id)
        state.parked = ()

    def _next_workers(self, state: _MSTState) -> tuple[int, ...]:
        """Where the MST can go next: a worker that can run its next planned step, or,
        between an epoch's first and last evaluation, any evaluation it has still to run
        (with ``train_order="any"``, while training, any shard it has still to train on)."""
        steps = list(self._free_evaluations(state)) or self._free_training(state)
        steps = steps or [state.pending[0]]
        return tuple(sorted({w for step in steps for w in self._runners(step)}))

    def _runners(self, step: Step) -> tuple[int, ...]:
        """The workers that can run ``step``: those holding its shard, or, for an
        evaluation with shared validation, every worker in the pool."""
        if step.kind is StepKind.EVAL and self.shared_validation:
            return self._members
        return self._holders[step.shard]

    def _runs_here(self, step: Step, worker: int) -> bool:
        if step.kind is StepKind.EVAL and self.shared_validation:
            return bool(self._held[worker])
        return step.shard in self._held[worker]

    def _free_training(self, state: _MSTState) -> list[Step]:
        """With ``train_order="any"``: the epoch's training steps still to run, when
        the MST is training (any of them may run next)."""
        if (
            self.train_order is not TrainOrder.ANY
            or not state.pending
            or state.pending[0].kind is not StepKind.TRAIN
        ):
            return []
        epoch = state.pending[0].epoch
        block = []
        for step in state.pending:
            if step.kind is not StepKind.TRAIN or step.epoch != epoch:
                break
            block.append(step)
        return block

    def _train_here_first(self, state: _MSTState, held: frozenset[int]) -> None:
        """Reorder the epoch's remaining training so that the shards this worker holds
        come first (plan order otherwise); positions follow the new order."""
        block = self._free_training(state)
        here = [s for s in block if s.shard in held]
        order = here + [s for s in block if s.shard not in held]
        if here and order != block:  # all of them in this visit: fewer hops
            self._replace_front(state, block, order, block[0].position)

    def _adopt_training(self, state: _MSTState, done: list[Step]) -> None:
        """Resuming with ``train_order="any"``: each epoch's training goes on from the
        steps that ran (their shards, in their positions), then the shards not yet
        trained on, in plan order."""
        for epoch in sorted({s.epoch for s in done}):
            ran = sorted((s for s in done if s.epoch == epoch), key=lambda s: s.position)
            block = [s for s in state.pending if s.kind is StepKind.TRAIN and s.epoch == epoch]
            shards = {s.shard for s in ran}
            if not block or not shards <= {s.shard for s in block}:
                return  # mark_done names the step that is not planned
            order = ran + [s for s in block if s.shard not in shards]
            self._replace_front(state, block, order, 0, start=state.pending.index(block[0]))

    @staticmethod
    def _replace_front(
        state: _MSTState, block: list[Step], order: list[Step], first: int, start: int = 0
    ) -> None:
        """Put ``order``'s shards, re-numbered from position ``first``, where ``block``
        (``len(block)`` steps from index ``start`` of the plan) was."""
        steps = [Step(StepKind.TRAIN, s.epoch, s.shard, first + i) for i, s in enumerate(order)]
        if start == 0:  # at every visit: O(block), not O(plan)
            for _ in block:
                state.pending.popleft()
            state.pending.extendleft(reversed(steps))
            return
        pending = list(state.pending)
        pending[start : start + len(block)] = steps
        state.pending = deque(pending)

    def _free_evaluations(self, state: _MSTState) -> Iterator[Step]:
        """The leading evaluations that may run in any order (all but the epoch's last)."""
        for step in state.pending:
            if step.kind is not StepKind.EVAL or step.is_last(StepKind.EVAL, self.n_shards):
                return
            yield step

    def _release(self, visit: Visit) -> _MSTState:
        for worker in visit.group or (visit.worker,):
            if self._busy.get(worker) != visit.mst_id:
                raise ConfigError(f"MST {visit.mst_id} is not running on worker {worker}")
        for worker in visit.group or (visit.worker,):
            del self._busy[worker]
        state = self._msts[visit.mst_id]
        state.running = False
        return state

    def _choose(self, worker: int) -> _MSTState | None:
        waiting = self._waiting[worker]
        if not waiting:
            return None
        if self._indexes is None:
            return self._pick([self._msts[i] for i in waiting])
        # What _pick would choose, without a pass over all of them.
        chosen = self._indexes[worker].pick(self._value_of(), lambda i: self._msts[i].priority)
        return None if chosen is None else self._msts[chosen]

    def _value_of(self) -> Callable[[int], float]:
        """The policy's value of a waiting MST (``PickIndex``), for this decision."""
        msts = self._msts
        if self.policy is SchedulingPolicy.OLDEST_FIRST:
            return lambda i: float(_evaluates_next(msts[i]))
        fallback = self._estimates_of_all()  # read once, not once per MST
        return lambda i: _work_left(msts[i], fallback)

    def _file(self, state: _MSTState, all_indexes: list[PickIndex]) -> None:
        """File a parked MST in the indexes of the workers it waits on (``PickIndex``)."""
        indexes = [all_indexes[worker] for worker in state.parked]
        if self.policy is SchedulingPolicy.OLDEST_FIRST:
            group = (state.priority, _evaluates_next(state))
            file_in(indexes, state.mst_id, group, 0.0, ties=False)
        else:
            group, measured, ties = _work_parts(state)
            file_in(indexes, state.mst_id, group, measured, ties=ties)

    def _take_visit(self, state: _MSTState, worker: int) -> Visit:
        held = self._held[worker]
        self._train_here_first(state, held)
        if not self._runs_here(state.pending[0], worker):  # evaluations out of plan order
            taken = [s for s in self._free_evaluations(state) if self._runs_here(s, worker)]
            for step in taken:
                state.pending.remove(step)
                state.n_pending[step.kind] -= 1
            return Visit(state.mst_id, worker, tuple(taken))
        steps: list[Step] = []
        seconds = 0.0
        while state.pending and self._runs_here(state.pending[0], worker):
            step = state.pending[0]
            steps.append(state.pending.popleft())
            state.n_pending[step.kind] -= 1
            seconds += self._estimate(state, step.kind)
            if step.is_last(StepKind.EVAL, self.n_shards):
                if not self._chains(steps, seconds, held):
                    break  # the epoch is evaluated: the procedure decides before more training
                self._train_here_first(state, held)
        return Visit(state.mst_id, worker, tuple(steps))

    # -- data-parallel groups (hybrid) ----------------------------------------------------
    def _assign_group(self, idle: list[int]) -> tuple[list[Visit], list[int]]:
        """Group epochs for the MSTs due one, in the policy's order, each on idle workers
        that together hold every shard (``covering_group``: the whole pool with one copy
        of the data; fewer with replicas); the workers left for MOP visits. While an MST
        is due a group it cannot have yet, no idle worker of the pool takes a MOP visit:
        the group would wait for it to end."""
        pool, k_min = self._pool_and_smallest_group()
        if len(pool) < 2:
            return [], idle
        runnable = self.n_runnable
        plans = {m.mst_id: self._group_plan(m, runnable, len(pool), k_min)
                 for m in self._msts.values() if self._epoch_starts(m)}  # fmt: skip
        due = sorted((self._msts[i] for i, (_, ok) in plans.items() if ok), key=lambda m: m.mst_id)
        visits: list[Visit] = []
        free = [w for w in idle if self._held[w]]
        while due:
            chosen = self._pick(due)
            due.remove(chosen)
            members = covering_group(free, self._held, self.n_shards, plans[chosen.mst_id][0])
            if members is None or len(members) < 2:
                # Its group is busy: the free workers keep themselves for it.
                return visits, [w for w in idle if not self._held[w]]
            self._unpark(chosen)
            group = self._take_group(chosen, members)
            chosen.running = True
            for visit in group:
                self._busy[visit.worker] = chosen.mst_id
            visits += group
            free = [w for w in free if w not in self._busy]
            self.n_decisions += 1
        return visits, [w for w in idle if w not in self._busy]

    def _pool_and_smallest_group(self) -> tuple[list[int], int]:
        """The workers holding shards, and the fewest of them (at least 2) that hold every
        shard; computed again only when holdings change."""
        if self._cover_of is not self._held:
            pool = [w for w in range(self.n_workers) if self._held[w]]
            smallest = covering_group(pool, self._held, self.n_shards) or pool
            self._cover_of, self._cover = self._held, (pool, max(2, len(smallest)))
        return self._cover

    @property
    def n_runnable(self) -> int:
        """MSTs with steps left, not stopped."""
        return sum(1 for m in self._msts.values() if m.pending and not m.stopped)

    def _epoch_starts(self, state: _MSTState) -> bool:
        """Whether the MST can start an epoch now (it changes mode only there)."""
        if state.running or state.stopped or state.held or not state.pending:
            return False
        first = state.pending[0]
        return first.kind is StepKind.TRAIN and first.position == 0

    def _group_plan(
        self, state: _MSTState, runnable: int, n_pool: int, k_min: int
    ) -> tuple[int, bool]:
        """The size of the MST's next group and whether its next epoch trains in one.

        The pool is shared out among the MSTs that can run (at least ``k_min``, the fewest
        workers holding every shard); within that, the size whose predicted epoch time is
        least, from the MST's last group epoch (compute shared out, all-reduce growing with
        the group: a model whose all-reduce costs more than it saves gets a smaller group).
        A group runs one MST; MOP runs the others side by side, each at one worker's speed
        at most, and a switch between modes idles workers while visits drain: under auto,
        an MST trains in a group when at most half the workers could be used by MOP and its
        predicted speed-up is over 1 and over half the MSTs that can run per group that
        fits in the pool (simulated, 16 MSTs on 256 workers with one copy: 13.8x the bound
        at half, 23.5x at their number; bench/simulate.py). Untried: any speed-up.
        """
        share = max(k_min, min(n_pool // max(runnable, 1), self.n_shards))
        cost = state.group_cost
        size = share
        if cost is not None:
            size = min(range(k_min, share + 1), key=lambda k: (cost.seconds(k), k))
            if size >= cost.largest and share > cost.largest:
                # The best size is the largest measured: the model cannot see past it, so
                # try twice that once (its all-reduce may grow more slowly than assumed).
                size = min(share, 2 * cost.largest)
        if self.hybrid is Hybrid.ON:
            return size, True
        if cost is not None:
            speedup = cost.alone / max(cost.seconds(size), 1e-12)
        else:
            speedup = math.inf if state.group_speedup is None else state.group_speedup
        n_groups = n_pool // k_min
        return size, 2 * runnable <= n_pool and speedup > max(1.0, runnable / (2 * n_groups))

    def _take_group(self, state: _MSTState, pool: Sequence[int]) -> list[Visit]:
        """One visit per member: the epoch's training and evaluation on the shards it is
        given (each shard to the member holding it with the fewest so far)."""
        epoch = state.pending[0].epoch
        steps = []
        while state.pending and state.pending[0].epoch == epoch:
            step = state.pending.popleft()
            state.n_pending[step.kind] -= 1
            steps.append(step)
        given: dict[int, list[int]] = {w: [] for w in pool}
        for shard in range(self.n_shards):
            holders = [w for w in self._holders[shard] if w in given]
            given[min(holders, key=lambda w: (len(given[w]), w))].append(shard)
        members = tuple(w for w in pool if given[w])
        return [
            Visit(state.mst_id, w, tuple(s for s in steps if s.shard in given[w]), members)
            for w in members
        ]

    def _measure_group(
        self, state: _MSTState, visit: Visit, step_seconds: Sequence[float], waited: float
    ) -> None:
        """Auto: the group epoch's speed-up over one worker: against the MST's epochs on one
        worker, if it had any (measured sub-epochs), else its members' compute without the
        all-reduce waits, added up."""
        k = len(visit.group)
        train = [t for step, t in zip(visit.steps, step_seconds, strict=True)
                 if step.kind is StepKind.TRAIN]  # fmt: skip
        wall = sum(train) / k  # each member's steps share out its time in the pass
        compute = k * max(wall - waited, 0.0)
        if state.n_seconds[StepKind.TRAIN]:
            alone = self._estimate(state, StepKind.TRAIN) * self.n_shards
        else:
            alone = compute
        state.group_speedup = alone / wall if wall > 0 else math.inf
        if k > 1:
            before = state.group_cost.waits if state.group_cost is not None else ()
            waits = (*[(k0, w0) for k0, w0 in before if k0 != k], (k, waited))
            state.group_cost = _GroupCost(alone, compute, waits)

    def _pick(self, eligible: list[_MSTState]) -> _MSTState:
        """The MST the policy runs first among ``eligible`` (in any order). One pass, no
        sort and no per-MST lookups: a worker may have 1,000s of MSTs waiting for it
        (successive halving's first rung), and this runs once per visit."""
        top = max(s.priority for s in eligible)
        if any(s.priority != top for s in eligible):
            eligible = [s for s in eligible if s.priority == top]
        if self.policy is SchedulingPolicy.RANDOM:
            eligible = sorted(eligible, key=_mst_id)  # the draw indexes them by id
            return eligible[int(self._rng.integers(len(eligible)))]
        if self.policy is SchedulingPolicy.OLDEST_FIRST:
            # An MST whose epoch is trained and waits only to evaluate goes first: the
            # visit is short and ends an epoch, so the procedure decides sooner (on the
            # LCBench surrogate, regret 0.01-0.03 lower at 1-3 FTE; BENCHMARKS.md).
            evaluating = [s for s in eligible if _evaluates_next(s)]
            return min(evaluating or eligible, key=_mst_id)  # the first added
        # Longest remaining work first (LRW); ties go to the lower id. The fallback
        # estimates are read once here, not once per MST.
        fallback = self._estimates_of_all()
        return max(eligible, key=lambda s: (_work_left(s, fallback), -s.mst_id))

    def _chains(self, steps: list[Step], seconds: float, held: frozenset[int]) -> bool:
        """Whether a visit that has just evaluated an epoch goes on into the next (only
        where no procedure decides on epochs: ``chain_seconds`` > 0). It does while it is
        short, if it can run to an epoch's end (the worker holds every shard); and always
        when it has only evaluated so far: its state is the one it came with, and the
        next epoch starts on the shard evaluated last, so the worker would take the MST's
        next visit anyway (one visit instead of an evaluation-only one and a training one)."""
        if self.chain_seconds <= 0:
            return False
        if not any(step.kind is StepKind.TRAIN for step in steps):
            return True
        return len(held) == self.n_shards and seconds < self.chain_seconds

    def _estimate(self, state: _MSTState, kind: StepKind) -> float:
        if state.n_seconds[kind]:
            return state.sum_seconds[kind] / state.n_seconds[kind]
        return self._estimate_of_all(kind)

    def _estimates_of_all(self) -> dict[StepKind, float]:
        return {kind: self._estimate_of_all(kind) for kind in _KINDS}

    def _estimate_of_all(self, kind: StepKind) -> float:
        """A step's seconds for an MST with none measured: the mean over all MSTs."""
        if self._n_seconds[kind]:
            return self._sum_seconds[kind] / self._n_seconds[kind]
        return 1.0 if kind is StepKind.TRAIN else 0.25


def check_n_shards(n_shards: int | None, n_workers: int) -> int:
    """``n_shards``, or ``n_workers`` for None; never fewer shards than workers."""
    if n_shards is None:
        return n_workers
    check_int("n_shards", n_shards, example=f"n_shards={2 * n_workers} (a multiple of n_workers)")
    if n_shards < n_workers:
        raise ConfigError(
            f"n_shards={n_shards} is fewer than the n_workers={n_workers} workers, so some "
            f"would hold no data; use n_shards >= {n_workers}, or leave it out (one per worker)"
        )
    return n_shards


def home_holdings(n_workers: int, n_shards: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Worker ``w`` owns shards ``w, w + p, w + 2p, ...`` (``p = n_workers``)."""
    n = check_n_shards(n_shards, n_workers)
    return tuple(tuple(range(w, n, n_workers)) for w in range(n_workers))


def weighted_holdings(speeds: Sequence[float], n_shards: int) -> tuple[tuple[int, ...], ...]:
    """Workers own shares of the ``n_shards`` shards in proportion to their speeds
    (largest remainders, at least one each): a worker half as fast owns half as many
    shards, so it carries half the work of every epoch (heterogeneous workers)."""
    n_shards = check_n_shards(n_shards, len(speeds))
    if not speeds or any(not speed > 0 for speed in speeds):
        raise ConfigError(f"speeds must be one positive number per worker, got {list(speeds)}")
    total = sum(speeds)
    quotas = [n_shards * speed / total for speed in speeds]
    counts = [max(1, int(q)) for q in quotas]
    by_remainder = sorted(range(len(speeds)), key=lambda w: (quotas[w] - counts[w], -w))
    while sum(counts) < n_shards:
        counts[by_remainder.pop()] += 1
    while sum(counts) > n_shards:  # the at-least-one rule took shards from fast workers
        counts[max(range(len(speeds)), key=lambda w: (counts[w] - quotas[w], w))] -= 1
    starts = np.cumsum([0, *counts])
    return tuple(tuple(range(int(a), int(b))) for a, b in zip(starts[:-1], starts[1:], strict=True))


def rehome(
    homes: Mapping[int, Iterable[int]],
    workers: Sequence[int],
    replicas: int = 1,
    shares: Mapping[int, int] | None = None,
) -> tuple[dict[int, frozenset[int]], dict[int, frozenset[int]]]:
    """Who owns and who holds each shard once the pool becomes ``workers``.

    ``homes`` maps the current workers to the shards they own. A worker that leaves
    (in ``homes``, not in ``workers``) hands its shards to those owning fewest; one that
    joins takes shards from those owning most, until counts differ by at most one: the
    fewest shards move. Each worker then holds its own shards and those of the
    ``replicas - 1`` workers before it in ``workers`` (as ``replicated_holdings``).
    ``shares`` (how many shards each worker is to own, e.g. in proportion to its speed)
    replaces "counts differ by at most one". Returns ``(homes, holdings)`` for ``workers``.
    """
    if not workers:
        raise ConfigError("a run needs at least one worker; keep one")
    owned = {w: set(homes.get(w, ())) for w in workers}
    for w, shards in homes.items():
        for shard in sorted(shards) if w not in owned else ():
            owned[min(workers, key=lambda v: (len(owned[v]), v))].add(shard)
    while True:
        if shares is None:
            most = max(workers, key=lambda v: (len(owned[v]), -v))
            fewest = min(workers, key=lambda v: (len(owned[v]), v))
            if len(owned[most]) - len(owned[fewest]) <= 1:
                break
        else:
            most = max(workers, key=lambda v: (len(owned[v]) - shares[v], -v))
            fewest = min(workers, key=lambda v: (len(owned[v]) - shares[v], v))
            if len(owned[most]) <= shares[most] or len(owned[fewest]) >= shares[fewest]:
                break
        shard = max(owned[most])
        owned[most].discard(shard)
        owned[fewest].add(shard)
    r = min(replicas, len(workers))
    held = {
        w: frozenset(s for k in range(r) for s in owned[workers[(i - k) % len(workers)]])
        for i, w in enumerate(workers)
    }
    return {w: frozenset(s) for w, s in owned.items()}, held


@dataclass(frozen=True)
class PoolStep:
    """One step of a change of workers, taken once its worker is idle: hold ``held`` from
    now on (owning ``home``), or, with ``leave``, stop."""

    worker: int
    held: frozenset[int] = frozenset()
    home: frozenset[int] = frozenset()
    leave: bool = False


@dataclass(frozen=True)
class PoolChange:
    """A move to a new pool of workers (``plan_pool_change``)."""

    homes: dict[int, frozenset[int]]  # who owns which shards once the steps are taken
    target: dict[int, frozenset[int]]  # who holds which shards then
    joiners: tuple[int, ...]  # start at once, holding target[j] and owning homes[j]
    steps: tuple[PoolStep, ...]  # for the others, in order


def plan_pool_change(
    homes: Mapping[int, frozenset[int]],
    target: Mapping[int, frozenset[int]],
    pool: Sequence[int],
    replicas: int = 1,
    shares: Mapping[int, int] | None = None,
) -> PoolChange:
    """Steps from the current pool (``homes``' workers, holding ``target`` once earlier
    steps are taken) to ``pool``: every gain first (a worker opens the shard before any
    step may go there), then every loss (no step goes there any more, then it drops
    it), then leavers stop. So every shard keeps a holder throughout."""
    new_homes, held = rehome(homes, pool, replicas, shares)
    joiners = tuple(w for w in pool if w not in homes)
    stay = [w for w in pool if w in homes]
    steps = [PoolStep(w, target[w] | held[w], new_homes[w] | homes[w])
             for w in stay if held[w] - target[w]]  # fmt: skip
    steps += [PoolStep(w, held[w], new_homes[w]) for w in stay if target[w] - held[w]]
    steps += [PoolStep(w, leave=True) for w in homes if w not in pool]
    return PoolChange(new_homes, held, joiners, tuple(steps))


def take_pool_step(
    scheduler: MOPScheduler,
    step: PoolStep,
    rehome_worker: Callable[[PoolStep], None],
    stop_worker: Callable[[int], None],
) -> None:
    """Take one step on the scheduler and, through the callbacks, on the workers, in the
    order that keeps every shard held (gains opened first, losses dropped last)."""
    if step.leave:
        scheduler.set_holdings(step.worker, ())
        stop_worker(step.worker)
    elif step.held >= scheduler.holdings()[step.worker]:
        rehome_worker(step)
        scheduler.set_holdings(step.worker, step.held)
    else:
        scheduler.set_holdings(step.worker, step.held)
        rehome_worker(step)


def _check_holdings(
    holdings: Sequence[Iterable[int]] | None, n_workers: int, n_shards: int
) -> tuple[frozenset[int], ...]:
    """Every worker holds a shard, and every shard is held (default: ``home_holdings``)."""
    if holdings is None:
        return tuple(frozenset(h) for h in home_holdings(n_workers, n_shards))
    held = tuple(frozenset(int(s) for s in shards) for shards in holdings)
    if len(held) != n_workers:
        raise ConfigError(f"holdings needs {n_workers} entries (one per worker), got {len(held)}")
    for worker, shards in enumerate(held):
        if not shards or not shards <= set(range(n_shards)):
            raise ConfigError(
                f"worker {worker} holds shards {sorted(shards)}: each worker holds at least "
                f"one shard, all in 0..{n_shards - 1}"
            )
    orphans = set(range(n_shards)).difference(*held)
    if orphans:
        raise ConfigError(f"no worker holds shard(s) {sorted(orphans)}: every shard needs a holder")
    return held


def covering_group(
    candidates: Sequence[int],
    held: Sequence[Iterable[int]],
    n_shards: int,
    size: int = 0,
) -> tuple[int, ...] | None:
    """Workers among ``candidates`` that together hold every shard (``held[w]``: worker
    w's shards), None if they cannot: a greedy cover (most shards not yet covered first,
    then the lower number), then, up to ``size``, more covers drawn the same way from the
    rest. Members that each cover the shards again split them evenly, and leave workers
    spread over the shards for the next group (with each shard on r consecutive workers,
    every (p/r)-th worker)."""
    rest = sorted(candidates)
    if size >= len(rest):  # all of them, if they cover: no choice to make
        covered = set().union(*(held[w] for w in rest))
        return tuple(rest) if covered >= set(range(n_shards)) else None
    members = _greedy_cover(rest, held, n_shards, len(rest), complete=True)
    if members is None:
        return None
    while len(members) < size and rest:
        members += _greedy_cover(rest, held, n_shards, size - len(members), complete=False) or []
    return tuple(sorted(members))


def _greedy_cover(
    rest: list[int], held: Sequence[Iterable[int]], n_shards: int, most: int, *, complete: bool
) -> list[int] | None:
    """Take up to ``most`` workers out of ``rest`` covering as many shards as they can, each
    the one adding most (then the lower number); None if ``complete`` and they cannot
    cover every shard."""
    uncovered = set(range(n_shards))
    members: list[int] = []
    while uncovered and rest and len(members) < most:
        best = max(rest, key=lambda w: (len(uncovered.intersection(held[w])), -w))
        if not uncovered.intersection(held[best]):
            break
        members.append(best)
        rest.remove(best)
        uncovered.difference_update(held[best])
    if complete and uncovered:
        return None
    return members


def replicated_holdings(
    n_workers: int, replicas: int, n_shards: int | None = None
) -> tuple[tuple[int, ...], ...]:
    """Worker ``w`` holds the shards of workers ``w, w-1, ..., w-replicas+1`` (mod p):
    every shard lives on ``replicas`` consecutive workers."""
    check_int("replicas", replicas, example=f"replicas=2 (at most n_workers={n_workers})")
    if replicas > n_workers:
        raise ConfigError(
            f"replicas={replicas} is more than the {n_workers} workers that could hold a "
            f"shard; use replicas <= {n_workers}"
        )
    homes = home_holdings(n_workers, n_shards)
    return tuple(
        tuple(sorted(s for k in range(replicas) for s in homes[(w - k) % n_workers]))
        for w in range(n_workers)
    )


def parse_train_order(order: TrainOrder | str) -> TrainOrder:
    try:
        return TrainOrder(order)
    except ValueError:
        raise ConfigError(
            f"train_order must be 'fixed' (drawn from the seed; results do not depend on "
            f"timing) or 'any' (whichever untrained shard's worker is free), got {order!r}"
        ) from None


def parse_hybrid(hybrid: Hybrid | str) -> Hybrid:
    try:
        return Hybrid(hybrid)
    except ValueError:
        raise ConfigError(
            f"hybrid must be 'off' (MOP only), 'auto' (an MST trains an epoch data-parallel "
            f"on every worker when fewer MSTs can run than half the workers) or 'on' (every "
            f"epoch), got {hybrid!r}"
        ) from None


def plan_order(step: Step) -> tuple[int, bool, int]:
    """A step's place in its MST's plan: by epoch, training before evaluation, position."""
    return step.epoch, step.kind is not StepKind.TRAIN, step.position


def _parse_policy(policy: SchedulingPolicy | str) -> SchedulingPolicy:
    try:
        return SchedulingPolicy(policy)
    except ValueError:
        names = ", ".join(repr(p.value) for p in SchedulingPolicy)
        raise ConfigError(f"policy must be one of {names}, got {policy!r}") from None


@dataclass(frozen=True)
class PoolEvent:
    """At simulated second ``at``, ``add`` workers of speed ``speed`` join and the workers
    ``remove`` leave (as ``RunHandle.add_workers`` / ``remove_worker`` would)."""

    at: float
    add: int = 0
    remove: tuple[int, ...] = ()
    speed: float = 1.0


@dataclass(frozen=True)
class SimulationResult:
    makespan: float
    lower_bound: float
    busy_seconds: tuple[float, ...]  # per worker
    n_decisions: int
    seconds_per_decision: float
    trace: tuple[tuple[float, float, Visit], ...]  # (start, end, visit)
    # Seconds each worker was in the pool (workers that joined or left: less than makespan).
    pool_seconds: tuple[float, ...] = ()

    @property
    def utilisation(self) -> float:
        if self.makespan == 0:
            return 1.0
        available = sum(self.pool_seconds) or self.makespan * len(self.busy_seconds)
        return sum(self.busy_seconds) / available


def simulate(
    scheduler: MOPScheduler,
    step_cost: Callable[[int, Step], float],
    *,
    worker_speed: Sequence[float] | None = None,
    on_epoch_end: Callable[[MOPScheduler, int, int], None] | None = None,
    pool_events: Sequence[PoolEvent] = (),
    replicas: int = 1,
    allreduce_seconds: Callable[[int, int], float] | None = None,
) -> SimulationResult:
    """Run the scheduler against a simulated clock (event-driven, no sleeping).

    ``step_cost(mst_id, step)`` gives a step's seconds on a worker of speed 1;
    ``worker_speed[w]`` divides it (0.5 makes a straggler twice as slow).
    ``on_epoch_end(scheduler, mst_id, epoch)`` may stop or extend MSTs, as a
    procedure would. ``pool_events`` change the pool as the driver does
    (``plan_pool_change``; each step taken once its worker is idle); the workers
    own what they hold at the start, replicated ``replicas`` times after a change.
    A group epoch (``scheduler.hybrid``) trains on every member at once: its training
    ends when the slowest member's share of it has, plus ``allreduce_seconds(mst_id,
    k)`` (the epoch's all-reduce on ``k`` members; default none); then each member
    evaluates its shards. Members are free once the whole group has finished.
    """
    p = scheduler.n_workers
    speed = list(worker_speed) if worker_speed is not None else [1.0] * p
    if len(speed) != p:
        raise ConfigError(f"worker_speed needs {p} entries (one per worker), got {len(speed)}")
    clock = 0.0
    events: list[tuple[float, int, Visit, list[float]]] = []
    busy = [0.0] * p
    work: dict[tuple[int, int], float] = {}
    trace = []
    decide_seconds = 0.0
    idle = set(range(p))
    pool = _SimulatedPool(scheduler, speed, busy, idle, pool_events, replicas)
    members_done: dict[int, list[tuple[Visit, list[float]]]] = {}
    comm: dict[int, float] = {}  # MST -> the all-reduce seconds of its group epoch in flight
    while True:
        pool.apply_due(clock)
        started = time.perf_counter()
        visits = scheduler.assign(idle)
        decide_seconds += time.perf_counter() - started
        timed = [(v, [step_cost(v.mst_id, s) / speed[v.worker] for s in v.steps]) for v in visits]
        for visit, seconds in _group_seconds(timed, allreduce_seconds, comm):
            idle.discard(visit.worker)
            end = clock + sum(seconds)
            heapq.heappush(events, (end, visit.worker, visit, seconds))
            trace.append((clock, end, visit))
        if not events:
            break
        if pool.next_at() < events[0][0]:  # the pool changes before the next visit ends
            clock = pool.next_at()
            continue
        clock, worker, visit, seconds = heapq.heappop(events)
        busy[worker] += sum(seconds)
        key = (visit.mst_id, worker)
        work[key] = work.get(key, 0.0) + sum(seconds)
        if visit.group:  # its members are free once the whole group has finished
            done = members_done.setdefault(visit.mst_id, [])
            done.append((visit, seconds))
            if len(done) < len(visit.group):
                continue
            del members_done[visit.mst_id]
            ran = sorted(((s, t) for v, ts in done for s, t in zip(v.steps, ts, strict=True)),
                         key=lambda pair: plan_order(pair[0]))  # fmt: skip
            visit = Visit(visit.mst_id, visit.group[0], tuple(s for s, _ in ran), visit.group)
            scheduler.complete(visit, [t for _, t in ran],
                               allreduce_seconds=comm.pop(visit.mst_id))  # fmt: skip
            idle.update(visit.group)
        else:
            scheduler.complete(visit, seconds)
            idle.add(worker)
        if on_epoch_end is not None:
            for step in visit.steps:
                if step.is_last(StepKind.EVAL, scheduler.n_shards):
                    on_epoch_end(scheduler, visit.mst_id, step.epoch)
    rows = {mst: i for i, mst in enumerate(sorted({mst for mst, _ in work}))}
    matrix = np.zeros((len(rows), scheduler.n_workers))
    for (mst, worker), total in work.items():
        matrix[rows[mst], worker] += total
    bound = makespan_lower_bound(matrix)
    n = max(scheduler.n_decisions, 1)
    return SimulationResult(
        makespan=clock,
        lower_bound=bound,
        busy_seconds=tuple(busy),
        n_decisions=scheduler.n_decisions,
        seconds_per_decision=decide_seconds / n,
        trace=tuple(trace),
        pool_seconds=pool.seconds(clock) if pool_events else (),
    )


def _group_seconds(
    timed: list[tuple[Visit, list[float]]],
    allreduce_seconds: Callable[[int, int], float] | None,
    comm: dict[int, float],
) -> list[tuple[Visit, list[float]]]:
    """Each visit's step seconds; a group member's training steps share out the group's
    training time (its slowest member's, plus the all-reduce), as a worker reports them."""
    groups: dict[int, list[tuple[Visit, list[float]]]] = {}
    out = []
    for visit, seconds in timed:
        if visit.group:
            groups.setdefault(visit.mst_id, []).append((visit, seconds))
        else:
            out.append((visit, seconds))
    for mst_id, members in groups.items():
        k = len(members)
        comm[mst_id] = allreduce_seconds(mst_id, k) if allreduce_seconds is not None else 0.0
        train = max(_training_seconds(*m) for m in members) + comm[mst_id]
        for visit, seconds in members:
            n_train = sum(s.kind is StepKind.TRAIN for s in visit.steps)
            out.append((visit, [train / n_train if s.kind is StepKind.TRAIN else t
                                for s, t in zip(visit.steps, seconds, strict=True)]))  # fmt: skip
    return out


def _training_seconds(visit: Visit, seconds: list[float]) -> float:
    return sum(t for s, t in zip(visit.steps, seconds, strict=True) if s.kind is StepKind.TRAIN)


class _SimulatedPool:
    """``simulate``'s workers joining and leaving: the driver's steps, on a clock."""

    def __init__(
        self,
        scheduler: MOPScheduler,
        speed: list[float],
        busy: list[float],
        idle: set[int],
        events: Sequence[PoolEvent],
        replicas: int,
    ) -> None:
        self.scheduler, self.speed, self.busy, self.idle = scheduler, speed, busy, idle
        self.events = sorted(events, key=lambda e: e.at)
        self.replicas = replicas
        held = scheduler.holdings()
        self.homes = dict(enumerate(held))
        self.target = dict(enumerate(held))
        self.pool = list(range(scheduler.n_workers))
        self.steps: deque[PoolStep] = deque()
        self.joined = [0.0] * scheduler.n_workers
        self.left: dict[int, float] = {}
        self.leaving: set[int] = set()

    def next_at(self) -> float:
        return self.events[0].at if self.events else math.inf

    def apply_due(self, clock: float) -> None:
        while self.events and self.events[0].at <= clock:
            event = self.events.pop(0)
            new = range(self.scheduler.n_workers, self.scheduler.n_workers + event.add)
            pool = [w for w in self.pool if w not in event.remove] + list(new)
            change = plan_pool_change(self.homes, self.target, pool, self.replicas)
            for worker in change.joiners:
                self.scheduler.add_worker(change.target[worker])
                self.speed.append(event.speed)
                self.busy.append(0.0)
                self.joined.append(clock)
                self.idle.add(worker)
            self.leaving.update(event.remove)
            self.steps.extend(change.steps)
            self.homes, self.target, self.pool = change.homes, change.target, pool
        while self.steps and not self.scheduler.is_busy(self.steps[0].worker):
            take_pool_step(self.scheduler, self.steps.popleft(), lambda step: None,
                           lambda worker: self.left.__setitem__(worker, clock))  # fmt: skip
        self.idle.difference_update(self.leaving)  # leavers take no new visits

    def seconds(self, end: float) -> tuple[float, ...]:
        return tuple(self.left.get(w, end) - start for w, start in enumerate(self.joined))
