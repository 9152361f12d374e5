"""Reading instance lists: a suite's `*instances.csv`, or a sample file that names the suite per row."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instance:
    """One verification task: paths as written in the CSV (relative to `folder`) and its timeout."""

    suite: str
    folder: Path
    onnx: str
    vnnlib: str
    timeout: float

    @property
    def onnx_path(self) -> Path:
        return (self.folder / self.onnx).resolve()

    @property
    def vnnlib_path(self) -> Path:
        return (self.folder / self.vnnlib).resolve()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.suite, normalize(self.onnx), normalize(self.vnnlib))


def normalize(path: str) -> str:
    """A CSV path without './' segments or a '.gz' suffix, for matching rows across files."""
    parts = [p for p in path.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    text = "/".join(parts)
    return text[:-3] if text.endswith(".gz") else text


def _rows(path: Path) -> list[list[str]]:
    # newline="" keeps '\r' inside fields, which strip() then removes; a last line without a
    # newline is read like any other.
    with open(path, newline="") as handle:
        return [[field.strip() for field in row] for row in csv.reader(handle) if any(f.strip() for f in row)]


def read_suite(csv_path: Path, suite: str | None = None) -> list[Instance]:
    """Every row of a competition instances CSV: `onnx,vnnlib,timeout`, paths relative to its folder."""
    csv_path = Path(csv_path)
    suite = suite or csv_path.parent.name
    instances = []
    for row in _rows(csv_path):
        if len(row) < 3:
            raise ValueError(f"{csv_path}: a row needs onnx,vnnlib,timeout: {row}")
        instances.append(Instance(suite, csv_path.parent, row[0], row[1], float(row[2])))
    return instances


def read_sample(sample_path: Path, suites: Path) -> list[Instance]:
    """A sample file of `suite,onnx,vnnlib,timeout` rows, paths relative to `suites/<suite>/`."""
    return [Instance(row[0], Path(suites) / row[0], row[1], row[2], float(row[3])) for row in _rows(sample_path)]


def find_suite_csv(folder: Path) -> Path:
    """The instances CSV of a suite folder (`<name>_instances.csv` or `instances.csv`)."""
    candidates = sorted(Path(folder).glob("*instances.csv"))
    if not candidates:
        raise FileNotFoundError(f"{folder}: no *instances.csv in this folder")
    return candidates[0]
