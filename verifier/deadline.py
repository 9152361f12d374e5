"""Time limits that count from process start, and a watchdog that enforces them from outside.

The watchdog is a small forked process, started before torch is imported: if the verifier is
still running WATCHDOG_GRACE after its deadline (stuck in a long native call, say: converting a
large model takes 5-9 s), it kills it, writes `timeout` to the results file and prints `timeout`,
so the limit is overrun by at most about 0.6 s. An answer after the limit counts as a timeout in
the competition anyway; the grace only lets a run that is ending print its own.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

WATCHDOG_GRACE = 0.5


def process_start_time() -> float:
    """Wall-clock time (time.time()) at which this process started; now, if it cannot be read."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat, counted after the command name
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class Deadline:
    """A time limit; `None` seconds means no limit. It counts from `start`, a wall-clock time
    (time.time(), such as process_start_time(); default: now), but runs on the monotonic clock:
    a step of the wall clock (NTP, or this project's sandboxes, whose clock jumped by seconds in
    a suite run) neither ends it early nor extends it. `start` and `at` are time.monotonic() values."""

    def __init__(self, seconds: float | None, start: float | None = None) -> None:
        now = time.monotonic()
        self.start = now if start is None else now - max(0.0, time.time() - start)
        self.at = None if seconds is None else self.start + seconds

    def remaining(self) -> float:
        return float("inf") if self.at is None else self.at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fraction(self, share: float) -> Deadline:
        """A deadline `share` of the remaining time from now (never later than this one)."""
        if self.at is None:
            return Deadline(None)
        sub = Deadline(None)
        sub.at = time.monotonic() + max(0.0, self.remaining()) * share
        return sub


def start_watchdog(deadline: Deadline, results_path: str | None, line: bytes = b"timeout\n") -> None:
    """Fork a watcher that ends this process WATCHDOG_GRACE seconds after the deadline, then
    writes `timeout` to the results file and `line` to stdout."""
    if deadline.at is None or not hasattr(os, "fork"):
        return
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid:  # the verifier keeps the write end open for as long as it lives
        os.close(read_end)
        return
    os.close(write_end)
    parent = os.getppid()
    wait = max(0.0, deadline.at + WATCHDOG_GRACE - time.monotonic())  # one clock for every process
    ready, _, _ = select.select([read_end], [], [], wait)
    if not ready:  # no EOF: the verifier is still alive at the grace limit
        try:
            os.kill(parent, signal.SIGKILL)
        except ProcessLookupError:
            os._exit(0)
        if results_path:
            try:
                with open(results_path, "w") as handle:
                    handle.write("timeout\n")
            except OSError:
                pass
        os.write(1, line)
    os._exit(0)
