"""Reading instance lists: a suite's `*instances.csv`, or a sample file that names the suite per row.

The competition's own files are read as its harness reads them: paths relative to the suite
folder (with or without './'), '.onnx.gz' models, '\\r' line ends, a last line without newline.
Problems a user can fix raise UserError naming the file (and the row).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from verifier.errors import UserError


@dataclass(frozen=True)
class Instance:
    """One verification task: paths as written in the CSV (relative to `folder`) and its timeout."""

    suite: str
    folder: Path
    onnx: str
    vnnlib: str
    timeout: float
    source: str = ""  # the CSV file the row came from, for messages
    row: int = 0      # its line number there (1-based)

    @property
    def onnx_path(self) -> Path:
        return (self.folder / self.onnx).resolve()

    @property
    def vnnlib_path(self) -> Path:
        return (self.folder / self.vnnlib).resolve()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.suite, normalize(self.onnx), normalize(self.vnnlib))

    @property
    def label(self) -> str:
        return f"{self.suite} {self.onnx} {self.vnnlib}"


def normalize(path: str) -> str:
    """A CSV path without './' segments or a '.gz' suffix, for matching rows across files."""
    parts = [p for p in path.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    text = "/".join(parts)
    return text[:-3] if text.endswith(".gz") else text


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    # newline="" keeps '\r' inside fields, which strip() then removes; a last line without a
    # newline is read like any other.
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            for row in reader:
                fields = [field.strip() for field in row]
                if any(fields):
                    yield reader.line_num, fields
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(str(path), f"cannot read the instance list ({error})") from None


def _timeout(text: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(str(path), f"row {line}: the timeout '{text}' is not a positive number of seconds")
    return value


def read_suite(csv_path: Path, suite: str | None = None) -> list[Instance]:
    """Every row of a competition instances CSV: `onnx,vnnlib,timeout`, paths relative to its folder."""
    csv_path = Path(csv_path)
    suite = suite or csv_path.parent.resolve().name
    instances = []
    for line, row in _rows(csv_path):
        if len(row) < 3 or not row[0] or not row[1]:
            raise UserError(str(csv_path), f"row {line}: needs onnx,vnnlib,timeout, got '{','.join(row)}'")
        instances.append(Instance(suite, csv_path.parent, row[0], row[1], _timeout(row[2], csv_path, line),
                                  str(csv_path), line))
    return instances


def read_sample(sample_path: Path, suites: Path) -> list[Instance]:
    """A sample file of `suite,onnx,vnnlib,timeout` rows, paths relative to `suites/<suite>/`."""
    sample_path = Path(sample_path)
    instances = []
    for line, row in _rows(sample_path):
        if len(row) < 4 or not all(row[:3]):
            raise UserError(str(sample_path), f"row {line}: needs suite,onnx,vnnlib,timeout, got '{','.join(row)}'")
        instances.append(Instance(row[0], Path(suites) / row[0], row[1], row[2],
                                  _timeout(row[3], sample_path, line), str(sample_path), line))
    return instances


def find_suite_csv(folder: Path) -> Path:
    """The instances CSV of a suite folder (`<name>_instances.csv` or `instances.csv`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(str(folder), "no such folder")
    candidates = sorted(folder.glob("*instances.csv"))
    if not candidates:
        raise UserError(str(folder), "no *instances.csv in this folder")
    return candidates[0]


def suite_csvs(source: Path) -> list[Path]:
    """The instance lists a command-line source names: a CSV, a suite folder, or a folder of suites."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir() and not any(source.glob("*instances.csv")):
        inside = [find_suite_csv(p) for p in sorted(source.iterdir()) if p.is_dir() and any(p.glob("*instances.csv"))]
        if inside:
            return inside
    return [find_suite_csv(source)]


def collect(sources: list[Path], sample: Path | None, suites: Path) -> list[Instance]:
    """Instances of every source, then of the sample; files must exist; repeated instances run once."""
    instances = read_sample(sample, suites) if sample else []
    for source in sources:
        for csv_path in suite_csvs(source):
            instances += read_suite(csv_path)
    unique: dict[tuple[str, str, str], Instance] = {}
    for instance in instances:
        for path in (instance.onnx_path, instance.vnnlib_path):
            if not path.is_file():
                raise UserError(instance.source, f"row {instance.row}: {path} does not exist")
        unique.setdefault(instance.key, instance)
    return list(unique.values())
