"""A deterministic, slow fake verifier for the suite tests (no torch: workers start in a blink).

The fake "model" file says what to do: empty, the verdict and a short sleep follow from a hash
of the instance's file names; `answer VERDICT` answers that; `crash` ends the worker; `hang`
never answers; `hog MB` holds that much memory. A `sat` comes with a dummy counterexample, which
the fake check finds valid unless the model file says `invalid` (or, for hashed instances, one in 7).

    python -m tests.fake_verifier check MODEL PROP CE
    python -m tests.fake_verifier [--split-writes S] suite ARGS...   (verify suite with the fake)
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

FACTORY = "tests.fake_verifier:fake_verifier"
COUNTEREXAMPLE = "((X_0 0.5)\n (Y_0 -1.0))\n"
HASHED = ("sat", "unsat", "unknown", "sat", "unsat", "timeout")


def digest(onnx: str, vnnlib: str) -> int:
    return int(hashlib.sha1(f"{Path(onnx).name}|{Path(vnnlib).name}".encode()).hexdigest(), 16)


def _hashed(task: dict[str, Any]) -> tuple[str, str | None]:
    number = digest(task["onnx"], task["vnnlib"])
    time.sleep(0.04 + number % 40 / 1000)
    verdict = HASHED[number % len(HASHED)]
    return verdict, COUNTEREXAMPLE if verdict == "sat" else None


def fake_verifier():
    """The worker's verify function."""

    def verify(task: dict[str, Any]) -> tuple[str, str | None]:
        words = Path(task["onnx"]).read_text().split()
        if not words:
            return _hashed(task)
        if words[0] == "crash":
            os._exit(3)
        if words[0] == "hang":
            time.sleep(3600)
        if words[0] == "hog":
            block = b"\1" * (int(words[1]) * 2**20)  # written bytes, so resident
            time.sleep(60)
            del block
        verdict = words[1]
        return verdict, COUNTEREXAMPLE if verdict == "sat" else None

    return verify


def check(model: str, prop: str, counterexample: str) -> int:
    """Exit 0 (valid) or 1 (invalid), as `verify check` does."""
    assert Path(counterexample).read_text() == "sat\n" + COUNTEREXAMPLE
    words = Path(model).read_text().split()
    valid = "invalid" not in words if words else digest(model, prop) % 7 != 0
    print("valid: fake" if valid else "invalid: fake")
    return 0 if valid else 1


def split_writes(pause: float):
    """A row writer that stops between the two halves of each row, so that kills land mid-row."""
    from verifier.benchmarks.results import write_all

    def write(fd: int, data: bytes) -> None:
        write_all(fd, data[: len(data) // 2])
        time.sleep(pause)
        write_all(fd, data[len(data) // 2:])

    return write


def hooks(pause: float = 0.0):
    from verifier.benchmarks.runner import Hooks

    command = (sys.executable, "-m", "tests.fake_verifier", "check")
    return Hooks(FACTORY, command, split_writes(pause)) if pause else Hooks(FACTORY, command)


def main(argv: list[str]) -> int:
    if argv[0] == "check":
        return check(*argv[1:4])
    pause = 0.0
    if argv[0] == "--split-writes":
        pause, argv = float(argv[1]), argv[2:]
    from verifier.benchmarks.suite import main as suite_main

    return suite_main(argv, hooks(pause))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
