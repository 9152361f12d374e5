"""A suite run: instances handed to long-lived workers, each answer checked and recorded as it comes.

`--jobs N` runs N slots, each a thread that owns one worker process at a time. A slot sends an
instance with its time limit (the CSV timeout, scaled and capped), waits for the answer (the
worker is killed `grace` seconds after the limit, or above the memory cap, and replaced), has
every `sat` re-checked by `verify check` in its own process, and appends the row to the store.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from verifier.benchmarks.instances import Instance
from verifier.benchmarks.progress import VERDICTS, Display, ProgressState
from verifier.benchmarks.results import (
    ResultsStore,
    Writer,
    counterexample_name,
    row_key,
    tool_version,
    write_all,
    write_text_atomic,
)
from verifier.benchmarks.scoring import Truth, judge, judge_row
from verifier.benchmarks.workers import WORKERS_LOG, Reply, Worker, WorkerLost, child_environment

REAL_VERIFIER = "verifier.benchmarks.worker_main:real_verifier"
CHECK_SECONDS = 600.0
CLUSTER_STATUS_SECONDS = 2.0


def verify_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "verifier.cli", *args]


@dataclass(frozen=True)
class RunOptions:
    """How instances run: parallel slots, time limits, memory cap, settings overrides."""

    jobs: int = 1
    cap: float = math.inf
    scale: float = 1.0
    grace: float = 2.0
    memory_cap_mb: float = 8192.0
    overrides: tuple[str, ...] = ()
    settings_file: str | None = None   # a families file replacing verifier/families.yaml
    device: str = "cpu"
    seed: int = 0
    cluster: str | None = None  # a Ray address ('auto', 'local', host:port): slots run in Ray actors

    def time_limit(self, instance: Instance) -> float:
        return min(instance.timeout * self.scale, self.cap)


@dataclass(frozen=True)
class Hooks:
    """What tests replace: the workers' verify factory, the check command, the row writer."""

    verifier: str = REAL_VERIFIER
    check: tuple[str, ...] = tuple(verify_command("check"))
    write: Writer = write_all


def family_settings(instances: list[Instance], options: RunOptions) -> dict[str, dict[str, Any]]:
    """The settings of each suite's family (its folder name), from the options' families file,
    with the overrides applied; suites whose family has no entry take the defaults."""
    from verifier.settings import FAMILIES_FILE, override
    from verifier.settings import family_settings as settings_of

    path = Path(options.settings_file) if options.settings_file else FAMILIES_FILE
    families = sorted({instance.suite for instance in instances})
    return {family: asdict(override(settings_of(family, path), options.overrides)) for family in families}


class SuiteRun:
    """Runs the instances that `store` does not hold yet, recording each answer as it comes."""

    def __init__(self, instances: list[Instance], store: ResultsStore, options: RunOptions,
                 settings: dict[str, dict[str, Any]], truth: dict[tuple[str, str, str], Truth],
                 hooks: Hooks | None = None) -> None:
        self.store, self.options, self.settings, self.truth = store, options, settings, truth
        self.hooks = hooks or Hooks()
        self.version = tool_version()
        self.pending = deque(i for i in instances if i.key not in store.done)
        self.state = ProgressState(total=len(instances))
        wanted = {i.key for i in instances}
        for row in store.rows:
            if row_key(row) in wanted:
                self.state.recorded(row["verdict"], judge_row(row, truth))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failures: list[BaseException] = []
        self._display: Display | None = None
        self._log: IO[str] | None = None
        self._ray: Any = None
        self._threads = max(1, (os.cpu_count() or 1) // self.options.jobs)
        self.requeued: set[tuple[str, str, str]] = set()  # instances whose actor died under them once
        self.workers: dict[int, Any] = {}  # slot -> its current worker (tests kill them)

    def run(self, display: Display) -> None:
        """Run everything pending; Ctrl-C stops the workers (finished rows stay recorded)."""
        self._display = display
        if self.options.cluster is not None:
            from verifier.benchmarks.cluster import connect

            self._ray = connect(self.options.cluster)
            cpus = float(self._ray.cluster_resources().get("CPU", 1))
            # an actor must fit on one node: at most the largest node's CPUs
            largest = max((node["Resources"].get("CPU", 1) for node in self._ray.nodes() if node.get("Alive")),
                          default=1)
            self._threads = max(1, int(min(cpus // self.options.jobs, largest)))
        slots = [threading.Thread(target=self._slot, args=(n,), daemon=True)
                 for n in range(min(self.options.jobs, len(self.pending)))]
        with open(self.store.folder / WORKERS_LOG, "a") as self._log, display:
            for slot in slots:
                slot.start()
            try:
                shown = 0.0
                while any(slot.is_alive() for slot in slots):
                    if self._ray is not None and time.monotonic() - shown > CLUSTER_STATUS_SECONDS:
                        self._show_cluster()
                        shown = time.monotonic()
                    time.sleep(0.1)
            finally:
                self._stop.set()
                for slot in slots:
                    slot.join()
        if self._failures:
            raise self._failures[0]

    def _take(self) -> Instance | None:
        with self._lock:
            return self.pending.popleft() if self.pending and not self._stop.is_set() else None

    def _new_worker(self) -> Any:
        """A local worker process, or with --cluster an actor placed by Ray."""
        if self._ray is None:
            return Worker(self.hooks.verifier, self._log)
        from verifier.benchmarks.cluster import RemoteWorker

        gpus = 1.0 if self.options.device == "cuda" else 0.0
        return RemoteWorker(self._ray, self.hooks.verifier, self.store.folder, self._threads, gpus)

    def _show_cluster(self) -> None:
        from verifier.benchmarks.cluster import cluster_status

        self.state.cluster = cluster_status(self._ray, sum(1 for w in list(self.workers.values()) if w.alive))

    def _slot(self, slot: int) -> None:
        worker = None
        try:
            while (instance := self._take()) is not None:
                if worker is None or not worker.alive:
                    if worker is not None:
                        worker.close()
                    worker = self.workers[slot] = self._new_worker()
                with self._lock:
                    self.state.start(slot, instance.label)
                began = time.monotonic()
                limit = self.options.time_limit(instance)
                try:
                    reply = worker.run(self._task(instance, limit), limit + self.options.grace,
                                       self.options.memory_cap_mb, self._stop)
                except WorkerLost as lost:
                    reply = self._lost(slot, instance, str(lost))
                    if reply is False:
                        continue
                if reply is None:
                    return
                self._finish(slot, instance, limit, reply, time.monotonic() - began)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which raises it
            self._failures.append(error)
            self._stop.set()
        finally:
            if worker is not None:
                worker.close()

    def _lost(self, slot: int, instance: Instance, why: str) -> Reply | bool:
        """An actor died under `instance`: queue it again the first time (False), else its reply
        is `error`."""
        with self._lock:
            self.state.running.pop(slot, None)
            if instance.key not in self.requeued:
                self.requeued.add(instance.key)
                self.pending.appendleft(instance)
                return False
        return Reply("error", note=f"lost twice: {why}")

    def _task(self, instance: Instance, limit: float) -> dict[str, Any]:
        return {"onnx": str(instance.onnx_path), "vnnlib": str(instance.vnnlib_path), "timeout": limit,
                "settings": self.settings[instance.suite], "device": self.options.device,
                "seed": self.options.seed, "threads": self._threads}

    def _finish(self, slot: int, instance: Instance, limit: float, reply: Reply, seconds: float) -> None:
        verdict, note = reply.verdict, reply.note
        if verdict not in VERDICTS:
            verdict, note = "error", f"the worker answered '{reply.verdict}'"
        name = check = ""
        if verdict == "sat":
            name, check, note = self._check(instance, reply.counterexample)
            if self._stop.is_set():  # Ctrl-C reaches the check too: its answer is not to be trusted
                return
        row = {"suite": instance.suite, "onnx": instance.onnx, "vnnlib": instance.vnnlib, "timeout": f"{limit:g}",
               "verdict": verdict, "seconds": f"{seconds:.3f}", "counterexample": name, "check": check,
               "note": note, "settings": json.dumps(self.settings[instance.suite], separators=(",", ":")),
               "version": self.version}
        judgement = judge(verdict, self.truth.get(instance.key), check == "valid")
        self.store.append(row)
        with self._lock:
            self.state.finish(slot, verdict, judgement)
            if self._display is not None:
                self._display.finished(row, judgement)

    def _check(self, instance: Instance, text: str | None) -> tuple[str, str, str]:
        """(counterexample file, check result, note): the file is re-checked by `verify check`."""
        if not text:
            return "", "missing", "sat without a counterexample"
        name = counterexample_name(instance)
        path = self.store.counterexamples / name
        write_text_atomic(path, "sat\n" + text)
        command = [*self.hooks.check, str(instance.onnx_path), str(instance.vnnlib_path), str(path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_SECONDS,
                                  env=child_environment())
        except subprocess.TimeoutExpired:
            return name, "error", f"verify check gave no answer in {CHECK_SECONDS:g} s"
        if done.returncode in (0, 1):
            said = (done.stdout.strip().splitlines() or [""])[-1]
            return name, "valid" if done.returncode == 0 else "invalid", "" if done.returncode == 0 else said
        lines = done.stderr.strip().splitlines()
        return name, "error", f"verify check failed: {lines[-1] if lines else f'exit code {done.returncode}'}"

