"""Judging verdicts against known ones, by the rules of shared/groundtruth/README.md.

A `sat` counts only with a counterexample that `verify check` confirmed; a confirmed `sat` on a
ground-truth `unsat` row is a *finding* (the 2021 answers were never checked), not a wrong answer.
Disputed rows are decided by the majority column of the disputed file; ties stay unjudged.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from verifier.benchmarks.instances import normalize
from verifier.benchmarks.results import row_key
from verifier.errors import UserError

POINTS = {"correct": 10, "wrong": -100}
POINTS_2023 = {"correct": 10, "wrong": -150}


@dataclass(frozen=True)
class Truth:
    verdict: str          # sat | unsat | unknown | disputed
    majority: str | None  # for disputed rows: sat | unsat | tie


def _truth_files(root: Path) -> list[Path]:
    return [root] if root.is_file() else sorted(p for p in root.rglob("*.csv") if not p.name.startswith("disputed-"))


def load_truth(root: Path) -> dict[tuple[str, str, str], Truth]:
    """Known verdicts keyed by (suite, onnx, vnnlib) from a `<suite>.csv` file or every one under a folder.

    A file needs the columns onnx, vnnlib and verdict; other CSV files in a folder are passed over.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(str(root), "no such ground-truth file or folder")
    disputed: dict[tuple[str, str, str], str] = {}
    for path in (root if root.is_dir() else root.parent).glob("disputed-*.csv"):
        for row in _dict_rows(path):
            disputed[(row["benchmark"], normalize(row["onnx"]), normalize(row["vnnlib"]))] = row["majority"]
    truth = {}
    for path in _truth_files(root):
        rows = _dict_rows(path)
        if rows and not {"onnx", "vnnlib", "verdict"} <= set(rows[0]):
            if root.is_file():
                raise UserError(str(path), "a ground-truth file needs the columns onnx, vnnlib and verdict")
            continue
        for row in rows:
            key = (path.stem, normalize(row["onnx"]), normalize(row["vnnlib"]))
            truth[key] = Truth((row.get("verdict") or "").strip(), disputed.get(key))
    return truth


def _dict_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(str(path), f"cannot read the ground truth ({error})") from None


def judge(verdict: str, truth: Truth | None, counterexample_valid: bool | None) -> str:
    """correct | wrong | finding | unjudged | unknown | timeout | error."""
    if verdict not in ("sat", "unsat"):
        return verdict if verdict in ("timeout", "error") else "unknown"
    if verdict == "sat" and not counterexample_valid:
        return "wrong"
    expected = None
    if truth is not None and truth.verdict in ("sat", "unsat"):
        expected = truth.verdict
    elif truth is not None and truth.verdict == "disputed" and truth.majority in ("sat", "unsat"):
        expected = truth.majority
    if expected is None:
        return "unjudged"
    if verdict == expected:
        return "correct"
    if verdict == "sat" and counterexample_valid:
        return "finding"
    return "wrong"


def points(judgements: list[str], rules: str = "2021") -> int:
    """+10 per correct answer, -100 per wrong one (-150 under the 2023 rules)."""
    table = POINTS_2023 if rules == "2023" else POINTS
    return sum(table.get(j, 0) for j in judgements)


def judge_row(row: dict[str, str], truth: dict[tuple[str, str, str], Truth]) -> str:
    """The judgement of one results row (a `sat` counts only with check `valid`)."""
    return judge(row["verdict"], truth.get(row_key(row)), row.get("check") == "valid")


COLUMNS = ("sat", "unsat", "correct sat", "correct unsat", "wrong", "finding", "unjudged", "unknown", "timeout",
           "error")


@dataclass
class Tally:
    """Answers and judgements of a group of results rows: `counts` has one key per COLUMNS entry."""

    instances: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    points: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, row: dict[str, str], judgement: str, rules: str) -> None:
        verdict = row["verdict"]
        self.instances += 1
        if verdict in ("sat", "unsat"):
            self.counts[verdict] += 1
        self.counts[f"correct {verdict}" if judgement == "correct" else judgement] += 1
        self.points += points([judgement], rules)
        self.seconds.append(float(row["seconds"] or 0))


def tally(rows: list[dict[str, str]], judgements: list[str], rules: str = "2021") -> dict[str, Tally]:
    """One Tally per suite, in name order, then "total"."""
    groups: dict[str, Tally] = {suite: Tally() for suite in sorted({row["suite"] for row in rows})}
    groups["total"] = Tally()
    for row, judgement in zip(rows, judgements):
        groups[row["suite"]].add(row, judgement, rules)
        groups["total"].add(row, judgement, rules)
    return groups
