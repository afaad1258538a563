"""Human-in-the-loop control: commands written to the store, applied by the running driver.

Anyone who can reach the store (the CLI, a notebook holding a ``RunHandle``, the
dashboard) writes a command; the driver applies pending commands at its next
scheduling step and records each as applied or rejected, with an event.
``submit`` checks a command against the store first, so most mistakes are
reported at once and nothing is queued.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Protocol

from modelhopper._vocabulary import MST, MSTStatus, Trainer
from modelhopper.errors import ConfigError, ModelHopperError
from modelhopper.space import Space
from modelhopper.store import BaseStore, CommandRecord, CommandStatus, EventKind, RunStatus

__all__ = ["CommandKind", "Steerable", "submit", "wait_for", "apply_pending"]


class CommandKind(StrEnum):
    STOP = "stop"
    RESUME = "resume"
    CLONE = "clone"
    ADD = "add"
    PRIORITY = "priority"
    WORKERS = "workers"  # {"add": n} or {"remove": worker}: elastic executors


class Steerable(Trainer, Protocol):
    """What a command acts on: the running driver's small public interface (a procedure's
    ``Trainer``, with priorities, resuming and a default budget)."""

    @property
    def default_epochs(self) -> int:
        """The epoch budget of an MST added or cloned without one."""

    def add(  # Trainer.add, with the priority commands may set
        self,
        params: Mapping[str, Any],
        *,
        epochs: int,
        parent: int | None = None,
        warm_start: bool = False,
        priority: int = 0,
    ) -> MST: ...

    def resume_mst(self, mst_id: int) -> None: ...

    def set_priority(self, mst_id: int, priority: int) -> None: ...

    def add_workers(self, n: int) -> list[int]: ...

    def remove_worker(self, worker: int) -> None: ...


def _mst(store: BaseStore, name: str, mst_id: Any) -> Any:
    msts = {m.mst_id: m for m in store.list_msts(name)}
    if mst_id not in msts:
        raise ConfigError(f"run {name!r} has no MST {mst_id!r}; its MSTs are {sorted(msts)}")
    return msts[mst_id]


def _check(store: BaseStore, name: str, kind: CommandKind, payload: Mapping[str, Any]) -> None:
    """What can be checked before the driver sees the command."""
    if kind is CommandKind.WORKERS:
        _check_workers(payload)
    run = store.get_experiment(name)
    if run.status is not RunStatus.RUNNING:
        raise ConfigError(f"run {name!r} is {run.status.value}; commands reach only a running run")
    if kind is CommandKind.WORKERS:
        return
    space = Space.from_dict(run.space)
    if kind is CommandKind.ADD:
        space.validate_point(payload["params"])
        return
    mst = _mst(store, name, payload["mst_id"])
    if kind is CommandKind.STOP and not mst.status.active:
        raise ConfigError(f"MST {mst.mst_id} is already {mst.status}; nothing to stop")
    if kind is CommandKind.RESUME and mst.status is not MSTStatus.STOPPED:
        raise ConfigError(f"MST {mst.mst_id} is {mst.status}, not stopped; nothing to resume")
    if kind is CommandKind.CLONE:
        space.validate_point({**mst.params, **payload.get("changes", {})})
    if kind is CommandKind.PRIORITY and not isinstance(payload.get("priority"), int):
        raise ConfigError(f"priority must be an integer, got {payload.get('priority')!r}")


def _check_workers(payload: Mapping[str, Any]) -> None:
    keys = set(payload)
    value = payload.get("add", payload.get("remove"))
    if len(keys) != 1 or keys > {"add", "remove"} or not isinstance(value, int):
        raise ConfigError(
            f"a workers command is {{'add': n}} or {{'remove': worker}}, got {dict(payload)}"
        )
    if "add" in payload and value < 1:
        raise ConfigError(f"add at least one worker, got add={value}")


def submit(
    store: BaseStore, name: str, kind: CommandKind | str, payload: Mapping[str, Any]
) -> CommandRecord:
    """Check a command and queue it for the running driver of run ``name``."""
    try:
        kind = CommandKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in CommandKind)
        raise ConfigError(f"unknown command {kind!r}; commands are {choices}") from None
    _check(store, name, kind, payload)
    return store.add_command(name, kind.value, dict(payload))


def wait_for(
    store: BaseStore, name: str, command: CommandRecord, *, timeout: float = 120.0
) -> CommandRecord:
    """Block until the driver applied or rejected the command; raise if it was rejected."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = store.get_experiment(name).status is not RunStatus.RUNNING  # read first
        if all(c.id != command.id for c in store.pending_commands(name)):
            done = next(c for c in store.list_commands(name) if c.id == command.id)
            if done.status is CommandStatus.REJECTED:
                raise ConfigError(f"command {done.kind} was rejected: {done.message}")
            return done
        if ended:  # and the command still pending: no driver will apply it
            raise ConfigError(
                f"run {name} ended before command {command.kind} was applied (it had no "
                "work left when the command came): send commands while a run has work"
            )
        time.sleep(0.05)  # the driver applies commands between visits
    raise ConfigError(
        f"command {command.kind} is still pending after {timeout:.0f} s; is the run's driver "
        f"alive? (`modelhopper status {name}`)"
    )


def apply_pending(store: BaseStore, name: str, target: Steerable) -> None:
    """Apply every pending command of run ``name`` to ``target``, in order; record the
    outcome of each."""
    for command in store.pending_commands(name):
        new_mst_id = None
        try:
            message, new_mst_id = _apply(target, CommandKind(command.kind), command.payload)
            status = CommandStatus.APPLIED
        except (ModelHopperError, KeyError, TypeError, ValueError) as e:
            message, status = f"{type(e).__name__}: {e}", CommandStatus.REJECTED
        store.set_command_status(command.id, status, message, new_mst_id=new_mst_id)
        mst_id = command.payload.get("mst_id")
        known = any(m.id == mst_id for m in target.msts())
        store.add_event(
            name, EventKind.COMMAND, mst_id=mst_id if known else None,
            detail={"command": command.id, "kind": command.kind, "status": status.value,
                    "message": message},
        )  # fmt: skip


def _apply(
    target: Steerable, kind: CommandKind, payload: Mapping[str, Any]
) -> tuple[str, int | None]:
    """Apply one command: its message, and the MST it created (add, clone) if any."""
    if kind is CommandKind.STOP:
        target.stop(payload["mst_id"])
        return f"stopped MST {payload['mst_id']}", None
    if kind is CommandKind.RESUME:
        target.resume_mst(payload["mst_id"])
        return f"resumed MST {payload['mst_id']}", None
    if kind is CommandKind.PRIORITY:
        target.set_priority(payload["mst_id"], payload["priority"])
        return f"MST {payload['mst_id']} has priority {payload['priority']}", None
    if kind is CommandKind.WORKERS:
        _check_workers(payload)
        if "add" in payload:
            return f"added worker(s) {target.add_workers(payload['add'])}", None
        target.remove_worker(payload["remove"])
        return f"worker {payload['remove']} leaves once its visit ends", None
    epochs = payload.get("epochs") or target.default_epochs
    if kind is CommandKind.ADD:
        mst = target.add(payload["params"], epochs=epochs, priority=payload.get("priority", 0))
        return f"added MST {mst.id}", mst.id
    parent = next((m for m in target.msts() if m.id == payload["mst_id"]), None)
    if parent is None:
        raise ConfigError(f"unknown MST {payload['mst_id']!r}")
    params = {**parent.params, **payload.get("changes", {})}
    warm = bool(payload.get("warm_start", True))
    mst = target.add(params, epochs=epochs, parent=parent.id, warm_start=warm)
    return f"cloned MST {parent.id} as MST {mst.id}", mst.id
