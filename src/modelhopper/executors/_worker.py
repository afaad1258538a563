"""What a worker does with a visit, independent of how the worker is hosted.

A worker owns one shard for the whole run (and may hold replicas of others: a
visit then runs steps on each shard it holds) and a small cache of built
estimators, so an MST that comes back only loads its state into modules it
already has instead of rebuilding them. It also owns a ``FeatureStore`` per
shard it holds: an MST whose estimator has a representation trains on the
shard's materialised features, built on first use and shared with every other
MST that uses the same representation.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from modelhopper._data_parallel import ShardPart, group_train_pass, n_global_batches
from modelhopper._vocabulary import StepKind
from modelhopper.data._encoded import EncodedColumn
from modelhopper.data._sharding import ShardData, open_validation_part
from modelhopper.errors import MSTFailedError
from modelhopper.estimator import (
    Estimator,
    Trainable,
    build_estimator,
    derive_seed,
    state_from_bytes,
    state_to_bytes,
)
from modelhopper.executors._base import (
    StateSource,
    StepOutcome,
    VisitResult,
    VisitTask,
    state_bytes,
)
from modelhopper.executors._group import (
    GROUP_UNSUPPORTED,
    GroupSpec,
    GroupUnsupportedError,
    group_channel,
)
from modelhopper.representations._store import FeatureStore, Lookup, MaterialiseBudget

__all__ = ["ShardWorker", "warm_up_torch", "worker_device"]

_GROUP_SALT = 3  # seeds a group member's own random draws (dropout) in a group epoch


def warm_up_torch() -> None:
    """Pay torch's one-off lazy imports (~2 s at the first optimizer) before the run starts.

    No backward pass: where torch sees a GPU, autograd's first one starts a thread per
    GPU, and a process forked after that cannot run autograd at all (the zygote and a
    forking driver warm up before they fork workers)."""
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()


def worker_device(device: str | None, worker: int) -> str | None:
    """The device ``worker`` trains on, checked here, in the worker (the driver never
    touches CUDA, so it can still fork workers): ``"cuda"`` alone spreads the workers
    over the GPUs this process sees (worker ``w`` on GPU ``w`` mod their number); any
    other device as given."""
    if device is None or torch.device(device).type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r}, but PyTorch sees no GPU here (torch.cuda.is_available() is "
            "False): install a CUDA build of torch, or leave device unset to train on the CPU"
        )
    count = torch.cuda.device_count()
    index = torch.device(device).index
    if index is None:
        index = worker % count
    elif index >= count:
        raise RuntimeError(
            f"device={device!r}, but this process sees {count} GPU(s), numbered from 0: "
            "name one of them, or 'cuda' to spread the workers over all of them"
        )
    torch.cuda.set_device(index)  # the GPU this process's CUDA work (pinning, NCCL) goes to
    return f"cuda:{index}"


class ShardWorker:
    def __init__(
        self,
        worker: int,
        shards: Mapping[int, ShardData],
        n_shards: int,
        factory: Callable[[dict[str, Any]], Trainable],
        *,
        cache_size: int = 8,
        materialise: MaterialiseBudget | None = None,
        feature_dir: str | None = None,
        device: str | None = None,
        home: Collection[int] | None = None,
        validation: Mapping[int, str] | None = None,
    ) -> None:
        """``materialise`` bounds the shard's materialised representations (defaults:
        ``MaterialiseBudget()``); ``feature_dir`` holds their disk tier (default: a
        ``features`` folder in the shard's folder, so a replaced worker reuses them).
        ``device`` (e.g. ``"cuda"``) is where models train; states hop in CPU form.
        ``shards`` maps the indices of the shards this worker holds to their data;
        ``home`` names those it owns (default: shard ``worker``), whose materialised
        features it keeps on disk; the others are replicas of other workers' shards.
        ``validation`` maps shards to the folders whose validation parts this worker may
        evaluate without holding them (shared validation), opened when first asked."""
        self.device = torch.device(device) if device is not None else None
        self.worker = worker
        self.n_shards = n_shards
        self.factory = factory
        self.cache_size = cache_size
        self._materialise, self._feature_dir = materialise, feature_dir
        # mst_id -> (estimator, RNG state after its last step here), least recent first
        self._cache: OrderedDict[int, tuple[Trainable, torch.Tensor]] = OrderedDict()
        self.shards: dict[int, ShardData] = {}
        self.features: dict[int, FeatureStore] = {}
        self._validation_paths = dict(validation or {})
        self._validation_parts: dict[int, ShardData] = {}
        self.hold(shards, (worker,) if home is None else home)

    def hold(self, shards: Mapping[int, ShardData], home: Collection[int]) -> None:
        """Hold these shards from now on (a worker joined or left the run: shards were
        re-homed); the materialised features of shards held before are kept."""
        owned = set(home)
        features = {}
        for index, data in shards.items():
            folder = _feature_dir(data, self._feature_dir, index, owned)
            features[index] = self.features.get(index) or FeatureStore(
                data, self._materialise, folder
            )
        self.shards, self.features = dict(shards), features

    def read_validation(self, paths: Mapping[int, str]) -> None:
        """Evaluate the validation parts of these shards (not held) from these folders
        from now on (shared validation; the Ray actor's parts moved or were copied)."""
        for index in list(self._validation_parts):
            if paths.get(index) != self._validation_paths.get(index):
                del self._validation_parts[index]  # closes its memory maps
        self._validation_paths = dict(paths)

    @property
    def nbytes(self) -> int:
        """Bytes of shard data this worker holds, replicas included."""
        return sum(data.nbytes for data in self.shards.values())

    def run(self, task: VisitTask) -> VisitResult:
        started = time.perf_counter()
        result = self._run_isolated(task)
        return dataclasses.replace(result, busy_seconds=time.perf_counter() - started)

    def _run_isolated(self, task: VisitTask) -> VisitResult:
        try:
            return self._run(task)
        except GroupUnsupportedError as e:  # auto mode trains the MST on one worker instead
            failure = self._failure(task, str(e))
            return dataclasses.replace(failure, extra={GROUP_UNSUPPORTED: True})
        except MSTFailedError as e:
            return self._failure(task, str(e))
        except (MemoryError, torch.OutOfMemoryError) as e:
            return self._failure(task, f"out of memory: {e}; try a smaller batch_size or model")
        except Exception as e:  # the MST fails alone; the worker lives on
            return self._failure(task, f"{type(e).__name__}: {e}")

    def _failure(self, task: VisitTask, reason: str) -> VisitResult:
        self._cache.pop(task.mst_id, None)
        return VisitResult(self.worker, task.mst_id, error=reason, traceback=traceback.format_exc())

    def _run(self, task: VisitTask) -> VisitResult:
        estimator, rng = self._estimator_for(task)
        inputs = {}  # shard -> what the model reads there, looked up once per visit
        torch.set_rng_state(rng)
        outcomes: list[StepOutcome] = []
        steps = task.steps
        group: dict[str, Any] = {}
        if task.group is not None:  # the epoch's training, data-parallel with the group
            outcomes, group = self._train_in_group(estimator, task, task.group)
            steps = tuple(step for step in steps if step.kind is StepKind.EVAL)
        epoch_states = []
        trained = bool(outcomes)
        extra: dict[str, Any] = {}
        for step in steps:
            if step.shard not in inputs:
                inputs[step.shard] = self._inputs(estimator, step.shard)
            train_x, val_x, transform, extra = inputs[step.shard]
            data = self._data(step.shard)
            if step.kind is StepKind.TRAIN:
                result = estimator.train_pass(
                    train_x,
                    data.train_y,
                    seed=task.seed,
                    epoch=step.epoch,
                    shard=step.shard,
                    transform=transform,
                )
                if step.is_last(StepKind.TRAIN, self.n_shards):
                    estimator.end_epoch()
            else:  # evaluations may run in any order: they leave the RNG as they found it
                rng_before = torch.get_rng_state()
                result = estimator.evaluate_pass(val_x, data.val_y, transform=transform)
                torch.set_rng_state(rng_before)
            outcomes.append(StepOutcome(step, result))
            trained = trained or step.kind is StepKind.TRAIN
            # The state an epoch ended with, for a visit going on into the next epoch; not
            # when nothing trained before: the driver has that state (the one sent here).
            if (
                trained
                and step.is_last(StepKind.EVAL, self.n_shards)
                and step is not task.steps[-1]
            ):
                epoch_states.append((step.epoch, self._state_bytes(estimator)))
        rng = torch.get_rng_state()
        self._remember(task.mst_id, estimator, rng)
        # Evaluation changes no state: after one that only evaluated, the driver has the
        # state the visit started from, and none is encoded or sent back.
        unchanged = not trained and task.source is not StateSource.FRESH
        return VisitResult(
            self.worker, task.mst_id, tuple(outcomes),
            None if unchanged else self._state_bytes(estimator), extra={**extra, **group},
            epoch_states=tuple(epoch_states), state_unchanged=unchanged,
        )  # fmt: skip

    def _train_in_group(
        self, estimator: Trainable, task: VisitTask, spec: GroupSpec
    ) -> tuple[list[StepOutcome], dict[str, Any]]:
        """This member's share of a group epoch (``_data_parallel``): the task's training
        steps, on shards this worker holds, all of one epoch; the epoch's global batches
        and the seconds spent in all-reduce."""
        if not isinstance(estimator, Estimator):
            raise GroupUnsupportedError(
                f"a data-parallel group trains PyTorch Estimators only; this MST's is a "
                f"{type(estimator).__name__}: use hybrid='auto' (it trains such MSTs on one "
                "worker) or 'off'"
            )
        train = [step for step in task.steps if step.kind is StepKind.TRAIN]
        epoch = train[0].epoch
        if spec.rank:  # the leader's draws go on with the MST; the others' start from the seed
            torch.manual_seed(derive_seed(task.seed, epoch, spec.rank, _GROUP_SALT))
        parts = []
        for step in train:
            x, _, transform, _ = self._inputs(estimator, step.shard)
            parts.append(ShardPart(step.shard, x, self.shards[step.shard].train_y, transform))
        with group_channel(spec) as channel:
            rows = torch.tensor([float(sum(len(part.y) for part in parts))], dtype=torch.float64)
            channel.all_reduce(rows)  # the group's rows, hence its number of global batches
            n_rows = int(rows.item())
            results = group_train_pass(
                estimator, parts, seed=task.seed, epoch=epoch, n_rows=n_rows,
                all_reduce=channel.all_reduce,
            )  # fmt: skip
        estimator.end_epoch()  # every member: their schedules stay equal
        info = {
            "group_steps": n_global_batches(n_rows, estimator.batch_size),
            "allreduce_seconds": channel.seconds,
        }
        return [StepOutcome(step, results[step.shard]) for step in train], info

    def _state_bytes(self, estimator: Trainable) -> bytes:
        """The MST's state as it is now, the worker's RNG included (what hops on)."""
        return state_to_bytes(self._with_device_rng(estimator.get_state(torch.get_rng_state())))

    def _inputs(self, estimator: Trainable, index: int):
        """The x the model trains on in shard ``index``: raw, materialised features, or
        raw plus a transform."""
        representation = estimator.representation
        if index not in self.shards:  # only its validation part, read where it lies
            shard = self._data(index)  # the representation applies per batch: nothing kept
            return shard.train_x, shard.val_x, representation, {}
        shard = self.shards[index]
        if representation is None:
            return shard.train_x, shard.val_x, None, {}
        if isinstance(shard.train_x, EncodedColumn):  # decoded per batch: streamed
            return shard.train_x, shard.val_x, representation, {}
        features = self.features[index]
        lookup = features.get(representation)
        extra = {"features": _feature_report(representation.name, lookup, features)}
        if lookup.features is None:  # over budget: apply it to every batch instead
            return shard.train_x, shard.val_x, representation, extra
        return lookup.features.train_x, lookup.features.val_x, None, extra

    def _data(self, index: int) -> ShardData:
        """A shard this worker holds, or one whose validation part it may evaluate."""
        if index in self.shards:
            return self.shards[index]
        if index not in self._validation_parts:
            if index not in self._validation_paths:
                raise RuntimeError(f"worker {self.worker} neither holds nor may read shard {index}")
            self._validation_parts[index] = open_validation_part(self._validation_paths[index])
        return self._validation_parts[index]

    def _estimator_for(self, task: VisitTask) -> tuple[Trainable, torch.Tensor]:
        cached = self._cache.get(task.mst_id)
        if task.source is StateSource.FRESH:
            # Initial weights come from the MST's seed alone, or from the parent it clones.
            estimator = self._build(task)
            rng = torch.get_rng_state()
            if task.init_state is not None:
                estimator.start_from(state_from_bytes(state_bytes(task.init_state)))
            return estimator, rng
        if task.source is StateSource.HELD:
            # The driver sends no state only when this worker ran the MST's last visit.
            if cached is None:
                raise RuntimeError(
                    f"worker {self.worker} was asked to continue MST {task.mst_id} "
                    "from state it does not hold"
                )
            return cached
        if task.state is None:
            raise RuntimeError(f"MST {task.mst_id}'s visit was sent without its state")
        estimator = cached[0] if cached else self._build(task)
        state = state_from_bytes(state_bytes(task.state))
        cuda = self._cuda_device()
        if "cuda_rng" in state and cuda is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], cuda)
        return estimator, estimator.set_state(state)

    def _build(self, task: VisitTask) -> Trainable:
        estimator = build_estimator(self.factory, task.params, task.seed)
        estimator.place(str(self.device) if self.device is not None else None)
        return estimator

    def _cuda_device(self) -> torch.device | None:
        return self.device if self.device is not None and self.device.type == "cuda" else None

    def _with_device_rng(self, state: dict[str, Any]) -> dict[str, Any]:
        """On a GPU, dropout draws from the GPU's generator: its state hops too."""
        cuda = self._cuda_device()
        if cuda is not None:
            state["cuda_rng"] = torch.cuda.get_rng_state(cuda)
        return state

    def _remember(self, mst_id: int, estimator: Trainable, rng: torch.Tensor) -> None:
        self._cache[mst_id] = (estimator, rng)
        self._cache.move_to_end(mst_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _feature_dir(shard: ShardData, given: str | None, index: int, owned: set[int]) -> str | None:
    """Where a shard's materialised features live on disk: for a shard the worker owns,
    ``given`` (for its first shard; a ``shard-N`` folder in it for the others) or a ``features``
    folder beside the shard's files; for a replica, nowhere (memory only): that folder
    is its owner's, and two writers would race in it."""
    if index not in owned:
        return None
    if given is not None:
        return given if index == min(owned) else str(Path(given) / f"shard-{index}")
    return str(Path(shard.path) / "features") if shard.path is not None else None


def _feature_report(name: str, lookup: Lookup, store: FeatureStore) -> dict[str, Any]:
    """What one visit's representation cost, for VisitResult.extra (plain, picklable)."""
    return {
        "representation": name,
        "tier": str(lookup.tier),
        "built": lookup.built,
        "seconds": lookup.seconds,
        "nbytes": lookup.nbytes,
        "evicted": list(lookup.evicted),
        "built_bytes": store.built_bytes,
    }
