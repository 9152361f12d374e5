"""Worker processes seen from the parent: start one, hand it a task, enforce time and memory.

A worker imports the verifier once and keeps converted models (benchmarks/worker_main.py), so
short instances do not pay for start-up. The parent owns the limits: it kills a worker hard
(SIGKILL) when an answer is overdue or its resident memory passes the cap, and a killed or dead
worker is replaced for the next instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.1
START_SECONDS = 300.0
WORKERS_LOG = "workers.log"


@dataclass(frozen=True)
class Reply:
    """What became of one task."""

    verdict: str
    counterexample: str | None = None
    note: str = ""


class WorkerLost(Exception):
    """The process running an instance died with it (a cluster's actor or node): it may run again."""


class WorkerStartError(Exception):
    """A worker did not come up (its messages are in the workers log)."""


def child_environment() -> dict[str, str]:
    """The environment of workers and checks: they import this checkout's packages first."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def resident_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Worker:
    """One long-lived worker process running the verify function named by `factory`."""

    def __init__(self, factory: str, log: IO[str], start_seconds: float = START_SECONDS) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "verifier.benchmarks.worker_main", factory],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                        env=child_environment())
        ready, _, _ = select.select([self.process.stdout], [], [], start_seconds)
        if not ready or self.process.stdout.readline().strip() != json.dumps({"ready": True}):
            ending = self._ending() if ready else f"no word in {start_seconds:g} s"
            self.kill()
            self.close()
            raise WorkerStartError(f"a worker did not start ({ending}): see {WORKERS_LOG} in the results folder")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _ending(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        code = self.process.returncode
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    def run(self, task: dict[str, Any], limit: float, memory_cap_mb: float, stop: threading.Event) -> Reply | None:
        """Reply to `task`; the worker is killed after `limit` s or above the cap; None if `stop` was set."""
        began = time.monotonic()
        try:
            self.process.stdin.write(json.dumps(task) + "\n")
            self.process.stdin.flush()
        except OSError:
            return Reply("error", note=f"worker died ({self._ending()})")
        while True:
            ready, _, _ = select.select([self.process.stdout], [], [], POLL_SECONDS)
            if ready:
                return self._reply()
            if stop.is_set():
                self.kill()
                return None
            if time.monotonic() - began > limit:
                self.kill()
                return Reply("timeout", note=f"no answer after {limit:g} s: killed")
            memory = resident_mb(self.process.pid)
            if memory > memory_cap_mb:
                self.kill()
                return Reply("error", note=f"memory cap exceeded ({memory:.0f} MB > {memory_cap_mb:g} MB): killed")

    def _reply(self) -> Reply:
        line = self.process.stdout.readline()
        if not line:  # the worker closed its end: it is exiting, or gone
            ending = self._ending()
            self.kill()
            return Reply("error", note=f"worker died ({ending})")
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("verdict"), str):
            self.kill()
            return Reply("error", note="malformed worker reply")
        return Reply(message["verdict"], message.get("counterexample"), str(message.get("note") or ""))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        """Let the worker end by closing its input (kill it if it does not), and release its pipes."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process.stdout.close()
