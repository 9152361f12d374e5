"""Inside a worker process: import the verifier once, then answer tasks until stdin closes.

    python -m verifier.benchmarks.worker_main MODULE:FACTORY

Protocol, one JSON object per line: the worker first sends {"ready": true}; then, for each task
read from stdin ({"onnx", "vnnlib", "timeout", "settings", "device", "seed", "threads"}), it sends
{"verdict", "counterexample", "note"}. FACTORY() returns the function that decides a task:
`verify(task) -> (verdict, assignment text or None)`; tests name a fake one.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

Task = dict[str, Any]
VerifyFunction = Callable[[Task], tuple[str, str | None]]
PR_SET_PDEATHSIG = 1
MODELS_KEPT = 4


class ModelCache:
    """The last few converted models, by file (path, size and modification time)."""

    def __init__(self, load: Callable[[str], Any], size: int = MODELS_KEPT) -> None:
        self._load = load
        self._size = size
        self._models: OrderedDict[tuple[str, int, int], Any] = OrderedDict()

    def get(self, path: str) -> Any:
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = self._load(path)
        self._models[key] = model
        while len(self._models) > self._size:
            self._models.popitem(last=False)
        return model


def real_verifier() -> VerifyFunction:
    """The verifier itself, with a model cache; torch is imported here, once per worker."""
    from verifier.arguments import setup_torch
    from verifier.deadline import Deadline
    from verifier.load import load_for_verifying
    from verifier.settings import from_mapping
    from verifier.verify import verify_instance
    from verifier.witness import format_assignment

    cache = ModelCache(load_for_verifying)

    def verify(task: Task) -> tuple[str, str | None]:
        deadline = Deadline(task["timeout"])
        setup_torch(task["device"], task["threads"])
        settings = from_mapping(task["settings"], "the worker's task")
        outcome = verify_instance(task["onnx"], task["vnnlib"], settings, deadline, task["device"], task["seed"],
                                  load=cache.get)
        example = outcome.counterexample
        return outcome.verdict, format_assignment(example) if example is not None else None

    return verify


def answer(verify: VerifyFunction, task: Task) -> dict[str, Any]:
    """The reply to one task; failures become `error` with a one-line note."""
    from verifier.errors import UserError, first_line
    from verifier.vnnlib import VnnlibError

    try:
        verdict, counterexample = verify(task)
        return {"verdict": verdict, "counterexample": counterexample, "note": ""}
    except (UserError, VnnlibError) as error:
        return {"verdict": "error", "counterexample": None, "note": first_line(error)}
    except Exception as error:  # noqa: BLE001 - the worker lives on; the instance is recorded as `error`
        return {"verdict": "error", "counterexample": None,
                "note": f"internal error: {type(error).__name__}: {first_line(error)}"}


def _die_with_parent() -> None:
    # Without this a worker whose parent was SIGKILLed would finish its task first.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def main(argv: list[str]) -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # Replies get their own copy of stdout; fd 1 then points at stderr, so that stray prints of
    # libraries land in the log instead of the protocol.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    module, _, name = argv[0].partition(":")
    verify = getattr(importlib.import_module(module), name)()
    _send(channel, {"ready": True})
    for line in sys.stdin:
        if line.strip():
            _send(channel, answer(verify, json.loads(line)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
