"""`verify suite --cluster ADDRESS`: the suite's slots run their instances in Ray actors.

Each slot of the driver (benchmarks/runner.py) owns one long-lived actor instead of a local worker
process. The actor runs, on its node, the same `Worker` a local slot runs: a process that keeps
converted models warm, killed there when an answer is overdue or above the memory cap and
replaced. So the limits are enforced where the instance runs, with the local rules. The driver
alone writes results.csv and re-checks every `sat` with `verify check`: the counterexample comes
back in the reply. The files of the suites and this checkout must be at the same paths on every
node (a shared file system).

An actor that dies mid-instance (its process killed, its node lost) raises `WorkerLost` in the
driver; the runner queues that instance once more, and records `error` if it is lost again.
Ray is imported only here, only with `--cluster`: it is an optional extra
(`pip install -e ".[cluster]"`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from verifier.benchmarks.workers import POLL_SECONDS, WORKERS_LOG, Reply, Worker, WorkerLost
from verifier.errors import UserError

START_SECONDS = 300.0
# Seconds the driver waits past an instance's limit (plus grace) before it gives an actor up: the
# actor's own worker is killed at limit + grace, but it may first have to start one (up to
# START_SECONDS, after a kill), so only a stuck actor or node gets here.
DRIVER_MARGIN = START_SECONDS + 30.0


def connect(address: str) -> Any:
    """Join the Ray cluster at `address` ('auto', 'local' for a new one on this machine, or a
    Ray address) and return the ray module."""
    try:
        import ray
    except ImportError:
        raise UserError("--cluster", "Ray is not installed: pip install -e \".[cluster]\"") from None
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise UserError("--cluster", f"cannot join the Ray cluster at '{address}': {error}") from None
    return ray


def cluster_status(ray: Any, actors: int) -> str:
    """'N nodes, A actors alive' for the progress display (the actors: the driver's slots')."""
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return f"{nodes} node{'s' * (nodes != 1)}, {actors} actor{'s' * (actors != 1)} alive"


class SlotActor:
    """On a node: a local Worker, started on first use and after each kill."""

    def __init__(self, factory: str, log_folder: str) -> None:
        self.factory = factory
        folder = Path(log_folder) if Path(log_folder).is_dir() else Path(tempfile.gettempdir())
        self.log = open(folder / WORKERS_LOG, "a")  # noqa: SIM115 - held for the actor's life
        self.worker: Worker | None = None

    def where(self) -> dict[str, Any]:
        import ray
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def run(self, task: dict[str, Any], limit: float, memory_cap_mb: float) -> dict[str, Any]:
        if self.worker is None or not self.worker.alive:
            if self.worker is not None:
                self.worker.close()
            self.worker = Worker(self.factory, self.log)
        reply = self.worker.run(task, limit, memory_cap_mb, threading.Event())
        return asdict(reply)


class RemoteWorker:
    """What a driver slot holds instead of a local Worker: one SlotActor placed by Ray with the
    CPUs (and GPU) an instance uses."""

    def __init__(self, ray: Any, factory: str, log_folder: Path, cpus: float, gpus: float) -> None:
        self.ray = ray
        actor_class = ray.remote(SlotActor).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
        self.actor = actor_class.remote(factory, str(log_folder))
        try:
            self.place = ray.get(self.actor.where.remote(), timeout=START_SECONDS)
        except Exception as error:  # noqa: BLE001 - Ray raises several types for an actor that never came up
            self.close()
            raise UserError("--cluster", f"an actor did not start: {type(error).__name__}: {error}") from None
        self._alive = True

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int:
        return int(self.place["pid"])

    def run(self, task: dict[str, Any], limit: float, memory_cap_mb: float, stop: threading.Event) -> Reply | None:
        """The actor's reply; None if `stop` was set. Raises WorkerLost when the actor dies."""
        from ray.exceptions import RayActorError, RayTaskError

        began = time.monotonic()
        pending = self.actor.run.remote(task, limit, memory_cap_mb)
        while True:
            done, _ = self.ray.wait([pending], timeout=POLL_SECONDS)
            if done:
                try:
                    return Reply(**self.ray.get(pending))
                except RayActorError:
                    self._alive = False
                    raise WorkerLost(f"the actor on node {self.place['node'][:8]} died") from None
                except RayTaskError as error:
                    return Reply("error", note=f"actor failed: {str(error).splitlines()[0]}")
            if stop.is_set():
                self.close()
                return None
            if time.monotonic() - began > limit + DRIVER_MARGIN:
                self.close()
                raise WorkerLost(f"the actor on node {self.place['node'][:8]} gave no answer "
                                 f"{DRIVER_MARGIN:g} s past the limit")

    def close(self) -> None:
        self._alive = False
        with contextlib.suppress(Exception):  # an actor already gone needs no killing
            self.ray.kill(self.actor)
