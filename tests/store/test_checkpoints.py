"""Checkpoint files: atomic and durable writes, retention, clear errors."""

from __future__ import annotations

import os
import stat

import pytest

from modelhopper.errors import ConfigError, StoreError
from modelhopper.store._checkpoints import CheckpointManager


class _FsyncSpy:
    """Records each fsync: (path of the descriptor, is it a folder, does ``target`` exist)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, bool, bool]] = []
        self.target = ""
        self._real = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        self.calls.append((path, is_dir, os.path.exists(self.target)))
        self._real(fd)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name descriptors")
def test_the_data_is_fsynced_before_the_rename_and_sync_flushes_each_folder_once(
    tmp_path, monkeypatch
):
    manager = CheckpointManager(tmp_path / "checkpoints")
    spy = _FsyncSpy(monkeypatch)
    spy.target = str(manager.path(3, 7))
    path = manager.write(3, 7, b"state")
    assert path.read_bytes() == b"state" and not list(path.parent.glob("*.tmp"))
    assert spy.calls == [(str(path.with_suffix(".tmp").resolve()), False, False)]  # data only
    manager.write(3, 9, b"later")  # the same MST's folder
    manager.write(4, 9, b"other")  # a new MST's folder
    spy.calls.clear()
    manager.sync()
    root, folder = (tmp_path / "checkpoints").resolve(), path.parent.resolve()
    # the new MST folders' entries (their parent) first, then each folder's renames, once
    assert spy.calls == [
        (str(root), True, True),
        (str(folder), True, True),
        (str(manager.path(4, 9).parent.resolve()), True, True),
    ]
    spy.calls.clear()
    manager.sync()  # nothing written since
    assert spy.calls == []


def test_a_write_that_fails_names_the_file(tmp_path):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StoreError, match=r"cannot write checkpoint .*step-000001.state: .*disk"):
        CheckpointManager(blocker).write(0, 1, b"state")


def test_unknown_retention_is_refused():
    with pytest.raises(ConfigError, match=r"checkpoints must be one of 'latest\+best', .* got 'x'"):
        CheckpointManager(".", "x")


def test_prune_keeps_the_live_files_and_removes_earlier_runs_pt_files(tmp_path):
    manager = CheckpointManager(tmp_path)
    old = manager.path(0, 1).with_suffix(".pt")  # a checkpoint of an earlier version
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    stale, live = manager.write(0, 2, b"a"), manager.write(0, 3, b"b")
    manager.prune(0, {str(live)})
    assert [p.name for p in old.parent.iterdir()] == [live.name]
    assert not stale.exists()
