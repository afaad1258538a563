"""States that hop through shared memory: the driver passes a name, not megabytes.

A LocalExecutor worker writes each visit's state to a file in a folder on
``/dev/shm`` (memory, not disk) and replies with a ``ShmState`` naming it; the
next worker reads the file itself. The driver's pipes then carry a few hundred
bytes per visit whatever the model's size, so a worker waiting for its next
visit never waits for megabytes to cross the driver (the driver reads the file
only to write a checkpoint, off the critical path).

A file lives as long as the driver holds its ``ShmState`` (an MST's latest
state, an unrecorded visit, a visit in flight): the driver's copy deletes it
when dropped (CPython frees it at once; a worker's copy never deletes). The
folder goes with the executor; folders left by a driver killed with ``kill
-9`` are removed by the next driver that starts on the machine.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from pathlib import Path

from modelhopper.executors._base import StateRef

__all__ = ["ShmFolder", "ShmState", "shm_root"]

_PREFIX = "modelhopper-states-"


def shm_root() -> Path | None:
    """Where states can live in memory (Linux's /dev/shm); None: send them over pipes."""
    root = Path("/dev/shm")
    return root if root.is_dir() and os.access(root, os.W_OK) else None


class ShmState(StateRef):
    """A state in a shared-memory file, deleted when the driver drops it."""

    lost_with_worker = False  # the file outlives the worker that wrote it

    def __init__(self, path: str, nbytes: int, owner: int) -> None:
        self.path = path
        self.nbytes = nbytes
        self.owner = owner  # the driver's pid: only its copies delete the file

    def fetch(self) -> bytes:
        return Path(self.path).read_bytes()

    def __del__(self) -> None:
        if os.getpid() == self.owner:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class ShmFolder:
    """The driver's folder of states: made at start, removed at shutdown."""

    def __init__(self, root: Path) -> None:
        _remove_orphans(root)
        self.path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ShmWriter:
    """A worker's side: write a state, name it for the driver."""

    def __init__(self, folder: str, owner: int, worker: int) -> None:
        self.folder, self.owner = folder, owner
        self._names = (f"w{worker}-{os.getpid()}-{n}.state" for n in itertools.count())

    def write(self, state: bytes) -> ShmState | bytes:
        """The state's file; the bytes themselves if it cannot be written (a full
        /dev/shm: containers often give it 64 MiB), to go over the pipe as before."""
        path = os.path.join(self.folder, next(self._names))
        try:
            with open(path, "wb") as f:
                f.write(state)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return state
        return ShmState(path, len(state), self.owner)


def _remove_orphans(root: Path) -> None:
    """Folders of drivers that died without removing theirs (their pid is gone)."""
    for folder in root.glob(f"{_PREFIX}*"):
        pid = folder.name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
