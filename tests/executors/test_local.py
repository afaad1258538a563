"""LocalExecutor passes the executor conformance suite."""

from __future__ import annotations

import os
import signal

import modelhopper as mh
from modelhopper.testing import ExecutorConformance


class TestLocalExecutor(ExecutorConformance):
    def new_executor(self):
        return mh.LocalExecutor(threads_per_worker=1)

    def worker_pid(self, executor, worker):
        return executor.pids[worker]

    def kill_worker(self, executor, worker):
        os.kill(executor.pids[worker], signal.SIGKILL)
