"""Checkpoint files: each MST's state after each visit, written atomically, with retention.

Files are versioned by the number of steps the MST had completed, so the
store can name the one that matches what it recorded: a crash between
writing a file and committing its record leaves an unreferenced newer file,
never a record that points at the wrong state.
"""

from __future__ import annotations

import errno
import os
from enum import StrEnum
from pathlib import Path

from modelhopper.errors import ConfigError, StoreError

__all__ = ["Retention", "CheckpointManager", "SUFFIX"]

# What ``estimator.state_to_bytes`` writes (safetensors, or a torch.save zip for an
# unusual state): read it with ``mh.load_model`` or ``state_from_bytes``. Earlier
# runs' checkpoints (torch.save zips named ``.pt``) still load and are still pruned.
SUFFIX = ".state"
_SUFFIXES = (SUFFIX, ".pt")


class Retention(StrEnum):
    LATEST_AND_BEST = "latest+best"  # the state after the last visit and after the best epoch
    LATEST = "latest"
    ALL = "all"


class CheckpointManager:
    def __init__(
        self, root: str | os.PathLike, retention: Retention | str = Retention.LATEST_AND_BEST
    ) -> None:
        try:
            self.retention = Retention(retention)
        except ValueError:
            choices = ", ".join(repr(r.value) for r in Retention)
            raise ConfigError(f"checkpoints must be one of {choices}, got {retention!r}") from None
        self.root = Path(root)
        self._unsynced: set[Path] = set()  # folders whose new entries sync() flushes

    def path(self, mst_id: int, n_steps: int) -> Path:
        return self.root / f"mst-{mst_id:05d}" / f"step-{n_steps:06d}{SUFFIX}"

    def write(self, mst_id: int, n_steps: int, state: bytes) -> Path:
        """Write atomically: readers see the whole file or none (temp file, fsync, rename).
        The rename is durable (survives a power loss) once ``sync()`` has returned: call it
        before anything that refers to the file is committed."""
        path = self.path(mst_id, n_steps)
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                self._unsynced.add(path.parent.parent)  # the MST's folder's entry
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(state)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            self._unsynced.add(path.parent)  # the rename: the newest checkpoint's entry
        except OSError as e:
            raise StoreError(f"cannot write checkpoint {path}: {e}; check free disk space") from e
        return path

    def sync(self) -> None:
        """Flush the folder entries of the files written since the last call, once per
        folder (a record of many visits writes several files to one MST's folder)."""
        folders, self._unsynced = self._unsynced, set()
        try:
            for folder in sorted(folders, key=lambda p: (len(p.parts), str(p))):  # parents first
                _fsync_dir(folder)
        except OSError as e:
            self._unsynced |= folders
            raise StoreError(f"cannot flush checkpoint folder {folder}: {e}") from e

    def read(self, path: str | os.PathLike) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise StoreError(
                f"cannot read checkpoint {path}: {e}; the run directory may have been moved"
            ) from e

    def prune(self, mst_id: int, live: set[str]) -> None:
        """Delete an MST's checkpoints that are not in ``live`` (unless retention is 'all')."""
        if self.retention is Retention.ALL:
            return
        for path in self.path(mst_id, 0).parent.glob("step-*"):
            if path.suffix in _SUFFIXES and str(path) not in live:
                path.unlink(missing_ok=True)

    def keeps_best(self) -> bool:
        return self.retention is not Retention.LATEST


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries to disk (where the platform can: not on Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # a filesystem that cannot: skip
            raise
    finally:
        os.close(fd)
