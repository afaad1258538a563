"""The zygote: a pre-warmed process that forks LocalExecutor's worker processes.

Started fresh (``python -c`` calling ``_main(FD)``), never forked
from the user's process, so workers never re-run the user's script and inherit
none of its threads. It imports torch and the worker's modules once and runs no
parallel torch op (an OpenMP pool does not survive a fork), so each fork starts
a worker in milliseconds, with any number of threads. One zygote serves every
run of a driver process (a notebook's later ``fit`` calls start at once); it
exits when the driver does.

Driver and zygote talk over a socket pair: ``("fork", sys.path, cwd, environ)``
plus the worker's end of a fresh socket pair (passed as a file descriptor) ->
``("forked", pid)``; ``("exitcode", pid)`` -> ``("exitcode", code or None)``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path

from modelhopper.errors import ExecutorError

__all__ = ["Zygote", "ZygoteWorker", "shared_zygote"]

_LOCK = threading.Lock()
_SHARED: Zygote | None = None


def shared_zygote() -> Zygote:
    """The driver process's zygote, started on first use (and again if it died)."""
    global _SHARED
    with _LOCK:
        if _SHARED is None or not _SHARED.alive:
            _SHARED = Zygote()
        return _SHARED


class Zygote:
    """The driver's handle on a zygote process."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])  # so it imports this modelhopper
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import _main; _main({theirs.fileno()})"],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self._control = Connection(ours.detach())
        self._lock = threading.Lock()
        self._ready = False
        atexit.register(self.close)

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self, timeout: float) -> None:
        """Block until the zygote has imported torch and the worker's modules."""
        with self._lock:
            if self._ready:
                return
            if not self._control.poll(timeout):
                raise ExecutorError(
                    f"the worker zygote (pid {self.pid}) did not start within {timeout:.0f} s; "
                    "the machine may be overloaded: raise LocalExecutor(start_timeout=...)"
                )
            self._reply("ready")
            self._ready = True

    def fork(self, timeout: float) -> ZygoteWorker:
        """A new worker process, connected to this driver by a fresh socket pair."""
        self.wait_ready(timeout)
        ours, theirs = socket.socketpair()
        with self._lock, theirs:
            try:
                self._control.send(("fork", list(sys.path), os.getcwd(), dict(os.environ)))
                send_handle(self._control, theirs.fileno(), self.pid)
            except OSError as e:
                raise self._gone() from e
            pid = self._reply("forked")
        return ZygoteWorker(pid, Connection(ours.detach()), self)

    def exitcode(self, pid: int, wait: float = 0.0) -> int | None:
        """A forked worker's exit code once it has exited, waiting up to ``wait`` seconds.

        None if it is still running, or unknown (the zygote is gone: it reaped nothing more)."""
        with self._lock:
            try:
                self._control.send(("exitcode", pid, wait))
                return self._reply("exitcode")
            except (OSError, ExecutorError):
                return None

    def _reply(self, expected: str):
        try:
            kind, value = self._control.recv()
        except (EOFError, OSError) as e:
            raise self._gone() from e
        if kind != expected:
            raise ExecutorError(f"the worker zygote answered {kind!r} where {expected!r} was due")
        return value

    def _gone(self) -> ExecutorError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=1)
        return ExecutorError(
            f"the worker zygote (pid {self.pid}) exited with code {self._process.returncode}; "
            "its error is printed above"
        )

    def close(self) -> None:
        """Stop the zygote (its workers are stopped by their executors)."""
        self._control.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


class ZygoteWorker:
    """A worker process forked by the zygote: the driver's handle on it."""

    def __init__(self, pid: int, conn: Connection, zygote: Zygote) -> None:
        self.pid = pid
        self.conn = conn
        self._zygote = zygote
        self._code: int | None = None

    def is_alive(self) -> bool:
        if self._code is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        self._code = self._zygote.exitcode(self.pid)  # exited, not yet reaped
        return self._code is None

    @property
    def exitcode(self) -> int | None:
        if self._code is None:
            self._code = self._zygote.exitcode(self.pid, wait=1.0)
        return self._code

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


# -- the zygote process itself ------------------------------------------------------
def _main(fd: int) -> None:
    control = Connection(fd)
    import torch

    torch.set_num_threads(1)  # no OpenMP pool before forking; each worker sets its own
    from modelhopper.executors import _host
    from modelhopper.executors._worker import warm_up_torch

    warm_up_torch()
    _host.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    exits: dict[int, int] = {}
    signal.signal(signal.SIGCHLD, lambda *_: _reap(exits))
    try:
        control.send(("ready", os.getpid()))
    except OSError:  # the driver ended while we started: nothing to do
        os._exit(0)
    while True:
        try:
            message = control.recv()
        except (EOFError, OSError):  # the driver is gone
            os._exit(0)
        if message[0] == "fork":
            _, path, cwd, environ = message
            handle = recv_handle(control)
            pid = os.fork()
            if pid == 0:
                _child(control, handle, path, cwd, environ, _host)
            os.close(handle)
            control.send(("forked", pid))
        elif message[0] == "exitcode":
            control.send(("exitcode", _wait_exit(exits, message[1], message[2])))


def _child(control, handle, path, cwd, environ, host) -> None:
    code = 1
    try:
        control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sys.path[:] = path  # the driver's: the user's modules import as they do there
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        host.detach_from_parent()
        host.serve(Connection(handle))
        code = 0
    finally:
        os._exit(code)


def _reap(exits: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exits[pid] = os.waitstatus_to_exitcode(status)


def _wait_exit(exits: dict[int, int], pid: int, wait: float) -> int | None:
    """The exit code of a child, waiting up to ``wait`` s for one that is exiting."""
    deadline = time.monotonic() + wait
    _reap(exits)
    while pid not in exits and time.monotonic() < deadline:
        time.sleep(0.01)
        _reap(exits)
    return exits.get(pid)
