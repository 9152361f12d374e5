"""Command-line plumbing shared by every sub-command: one-line argument errors (exit 2), value
types that check what a user types before any work starts, logging levels and the torch set-up."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from verifier.errors import UserError

USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit code 2 (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USER_ERROR, f"{self.prog}: {message}\n")


def _number(text: str, kind: type, fits: Callable[[float], bool], wanted: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not fits(value):  # NaN fits nothing
        raise argparse.ArgumentTypeError(f"must be {wanted}, got '{text}'")
    return value


def seconds(text: str) -> float | None:
    """A time limit: a positive number of seconds; `inf` means no limit (None)."""
    value = _number(text, float, lambda v: v > 0, "a positive number of seconds (or inf)")
    return None if math.isinf(value) else value


def positive_number(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a positive number")


def non_negative_number(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < math.inf, "a number >= 0")


def positive_integer(text: str) -> int:
    return int(_number(text, int, lambda v: v >= 1, "a whole number >= 1"))


def output_file(text: str) -> str:
    """A file the command will write: its folder must exist and be writable, and it is no folder."""
    path = Path(text)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a folder, not a file")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write '{text}': the folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write '{text}': permission denied")
    return text


def input_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"'{text}' is not a readable file")
    return text


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="progress on stderr (-vv: debugging detail); tracebacks of internal errors")
    group.add_argument("-q", "--quiet", action="store_true", help="errors only on stderr, no warnings")


class _ElapsedFormatter(logging.Formatter):
    """`[   1.23s] message`: seconds since the process started, as the time limits count."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start

    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"[{record.created - self.start:7.2f}s] {prefix}{record.getMessage()}"


def configure_logging(verbose: int, quiet: bool, start: float | None = None) -> None:
    """Standard logging levels on stderr: WARNING by default, INFO with -v, DEBUG with -vv, ERROR with -q."""
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ElapsedFormatter(time.time() if start is None else start))
    root = logging.getLogger("verifier")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def setup_torch(device: str, threads: int | None = None) -> None:
    """Torch threads, and exact float32 on CUDA (TF32 matmuls would break the bounds' rounding rules).

    Raises UserError when `device` is cuda and no CUDA device is available."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda", "no CUDA device is available on this machine")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
