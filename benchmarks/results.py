"""The crash-safe results folder of a suite run.

`results.csv` gets one row per finished instance, formed in memory and appended with one write of
a line that ends in a newline, then fsynced: a run killed at any moment (SIGKILL included) leaves
whole rows, at most followed by one partial line, which the next `--resume` cuts away before it
appends. Counterexamples live in `counterexamples/`, each written atomically before its row.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from verifier import __version__
from verifier.benchmarks.instances import Instance, normalize
from verifier.errors import UserError

FIELDS = ("suite", "onnx", "vnnlib", "timeout", "verdict", "seconds", "counterexample", "check", "note",
          "settings", "version")
RESULTS_CSV = "results.csv"
COUNTEREXAMPLES = "counterexamples"
REPO = Path(__file__).resolve().parent.parent
Writer = Callable[[int, bytes], None]


def write_all(fd: int, data: bytes) -> None:
    """Write `data` to `fd`: one write() call, repeated only for what a short write left over."""
    while data:
        data = data[os.write(fd, data):]


def row_key(row: dict[str, str]) -> tuple[str, str, str]:
    """The row's instance, as `Instance.key` names it."""
    return (row["suite"], normalize(row["onnx"]), normalize(row["vnnlib"]))


def format_row(row: dict[str, str]) -> bytes:
    """One CSV line; line breaks inside values become spaces so that a row is always one line."""
    buffer = io.StringIO()
    values = [re.sub(r"[\r\n]+", " ", str(row.get(name, ""))) for name in FIELDS]
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode()


def counterexample_name(instance: Instance) -> str:
    """A short file name, unique per instance (property names reach 221 characters)."""
    digest = hashlib.sha1(f"{instance.suite}\0{instance.onnx}\0{instance.vnnlib}".encode()).hexdigest()[:8]
    suite = re.sub(r"[^A-Za-z0-9._-]", "_", instance.suite)[:40]
    return f"{suite}-{instance.row:04d}-{digest}.txt"


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a fsynced temporary file renamed over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def tool_version() -> str:
    """The verifier's version, with the git commit of the checkout when there is one."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return f"{__version__}+{done.stdout.strip()}"
    return __version__


def read_rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of a results CSV (a partial last line is left out)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(str(path), f"cannot read the results ({error})") from None
    text = data[: data.rfind(b"\n") + 1].decode(errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    if text and tuple(reader.fieldnames or ()) != FIELDS:
        raise UserError(str(path), f"not a results file of this version (columns {', '.join(FIELDS)})")
    return list(reader)


class ResultsStore:
    """results.csv of one folder, opened for appending; `done` holds the keys already recorded."""

    def __init__(self, folder: Path, resume: bool, write: Writer = write_all) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RESULTS_CSV
        self.counterexamples = self.folder / COUNTEREXAMPLES
        self._write = write
        self._lock = threading.Lock()
        try:
            self.counterexamples.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(str(self.folder), f"cannot create the results folder ({error})") from None
        self._cut_partial_line()
        self.rows = read_rows(self.path) if self.path.exists() else []
        if self.rows and not resume:
            raise UserError(str(self.path), "holds results already: add --resume, or choose another --out")
        self.done = {row_key(row) for row in self.rows}
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size == 0:
            self._append(",".join(FIELDS).encode() + b"\n")
            self._sync_folder()

    def _cut_partial_line(self) -> None:
        # A row cut short by a kill has no newline yet: drop it, it is run again.
        if not self.path.exists():
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _append(self, data: bytes) -> None:
        self._write(self._fd, data)
        os.fsync(self._fd)

    def append(self, row: dict[str, str]) -> None:
        """Record one finished instance for good."""
        data = format_row(row)
        with self._lock:
            self._append(data)
            self.rows.append(dict(zip(FIELDS, next(csv.reader([data.decode()])))))
            self.done.add(row_key(row))

    def close(self) -> None:
        os.close(self._fd)
