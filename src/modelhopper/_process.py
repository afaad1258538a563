"""Process hygiene shared by every process modelhopper starts (workers, loader processes).

Imports nothing from modelhopper: the ground floor.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # prctl option, linux/prctl.h


def die_with_parent() -> None:
    """On Linux, the kernel kills this process if its parent dies (a backstop to EOF).

    Without it, a process whose parent was killed with SIGKILL is orphaned and may
    wait forever on a pipe nobody writes to (seen with DataLoader workers).
    """
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)
