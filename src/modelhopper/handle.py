"""A handle on a run going on in the background: watch it and steer it from Python."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from modelhopper.commands import CommandKind, submit, wait_for
from modelhopper.errors import ConfigError, StoreError
from modelhopper.result import Result
from modelhopper.store import BaseStore, EventKind

__all__ = ["RunHandle"]


class RunHandle:
    """Returned by ``procedure.start(...)``: the run trains in a background thread.

    Each control method writes a command to the store, exactly as the CLI does
    from another process, and (with ``wait=True``) returns once the driver has
    applied it, raising ``ConfigError`` with the reason if it was rejected.
    """

    def __init__(self, name: str, store: BaseStore, fit: Callable[[], Result]) -> None:
        self.name = name
        self.store = store
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fit,), name=f"run-{name}")
        self._thread.daemon = True
        self._thread.start()
        self._wait_until_recorded()

    def _run(self, fit: Callable[[], Result]) -> None:
        try:
            self._result = fit()
        except BaseException as e:  # re-raised by wait()
            self._error = e

    def _wait_until_recorded(self) -> None:
        """Return once the run and its first MSTs are in the store (its ``started`` event:
        sharding and the procedure's first proposals come first), or raise its error."""
        while self._thread.is_alive():
            try:
                events = self.store.list_events(self.name)
            except StoreError:  # not created yet
                events = []
            if any(e.kind is EventKind.STARTED for e in events):
                return
            self._thread.join(timeout=0.05)
        if self._error is not None:
            raise self._error

    # -- control -------------------------------------------------------------
    def stop(self, mst: int, *, wait: bool = True) -> None:
        self._command(CommandKind.STOP, {"mst_id": mst}, wait)

    def resume(self, mst: int, *, wait: bool = True) -> None:
        self._command(CommandKind.RESUME, {"mst_id": mst}, wait)

    def set_priority(self, mst: int, priority: int, *, wait: bool = True) -> None:
        self._command(CommandKind.PRIORITY, {"mst_id": mst, "priority": priority}, wait)

    def clone(
        self,
        mst: int,
        changes: Mapping[str, Any] | None = None,
        *,
        warm_start: bool = True,
        epochs: int | None = None,
    ) -> int:
        """A new MST with ``mst``'s params updated by ``changes``; returns its id."""
        payload = {"mst_id": mst, "changes": dict(changes or {}), "warm_start": warm_start}
        return self._new_mst(CommandKind.CLONE, {**payload, "epochs": epochs})

    def add(self, params: Mapping[str, Any], *, epochs: int | None = None) -> int:
        """A new MST with these params; returns its id."""
        return self._new_mst(CommandKind.ADD, {"params": dict(params), "epochs": epochs})

    def add_workers(self, n: int = 1, *, wait: bool = True) -> None:
        """Start ``n`` more workers; shards are re-homed so that all share the work
        (``LocalExecutor``). The plan, and so every result, does not change."""
        self._command(CommandKind.WORKERS, {"add": n}, wait)

    def remove_worker(self, worker: int, *, wait: bool = True) -> None:
        """Let ``worker`` leave once its visit ends; its shards move to the others."""
        self._command(CommandKind.WORKERS, {"remove": worker}, wait)

    def _new_mst(self, kind: CommandKind, payload: dict[str, Any]) -> int:
        done = self._command(kind, payload, wait=True)
        if done.new_mst_id is None:  # applied, so the driver named the MST it created
            raise ConfigError(f"command {done.kind} was applied but names no new MST")
        return int(done.new_mst_id)

    def _command(self, kind: CommandKind, payload: dict[str, Any], wait: bool) -> Any:
        command = submit(self.store, self.name, kind, payload)
        return wait_for(self.store, self.name, command) if wait else command

    # -- watching --------------------------------------------------------------
    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def status(self) -> pd.DataFrame:
        """One row per MST so far: params, status, epochs, last and best metrics."""
        from modelhopper.experiment import load_result

        return load_result(self.name, store=self.store).to_dataframe()

    def wait(self, timeout: float | None = None) -> Result:
        """Block until the run ends; its ``Result``, or the error that ended it."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"run {self.name!r} is still going after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
