"""Provenance of a run: what code, data and machine produced it."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelhopper._version import __version__

__all__ = ["collect_provenance", "data_fingerprint"]


def _versions() -> dict[str, str]:
    import numpy
    import torch

    return {
        "modelhopper": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _git(directory: Path) -> dict[str, Any] | None:
    """Commit and dirty flag of the user's working directory, if it is a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def data_fingerprint(shard_paths: Sequence[str | os.PathLike]) -> str:
    """SHA-256 over every shard file, in shard order: the same data gives the same hash.

    Each file enters as its name and its own SHA-256, so sharding, which writes
    several files at once, computes the same value while writing them.
    """
    digest = hashlib.sha256()
    for shard in shard_paths:
        files = [f for f in Path(shard).iterdir() if f.suffix in (".npy", ".arrow")]
        for file in sorted(files, key=lambda f: f.name):
            digest.update(file.name.encode())
            with open(file, "rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def collect_provenance(
    *,
    seed: int,
    n_workers: int,
    shard_paths: Sequence[str | os.PathLike],
    executor: str,
    data_sha256: str | None = None,
) -> dict[str, Any]:
    """``data_sha256``: the shards' fingerprint if already computed (while writing them)."""
    return {
        "versions": _versions(),
        "git": _git(Path.cwd()),
        "data_sha256": data_sha256 or data_fingerprint(shard_paths),
        "seed": seed,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "n_workers": n_workers,
        "executor": executor,
        "argv": list(sys.argv),
        "cwd": str(Path.cwd()),
    }
