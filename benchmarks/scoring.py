"""Judging verdicts against known ones, by the rules of shared/groundtruth/README.md.

A `sat` counts only with a counterexample that `verify check` confirmed; a confirmed `sat` on a
ground-truth `unsat` row is a *finding* (the 2021 answers were never checked), not a wrong answer.
Disputed rows are decided by the majority column of the disputed file; ties stay unjudged.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from benchmarks.instances import normalize

POINTS = {"correct": 10, "wrong": -100}
POINTS_2023 = {"correct": 10, "wrong": -150}


@dataclass(frozen=True)
class Truth:
    verdict: str          # sat | unsat | unknown | disputed
    majority: str | None  # for disputed rows: sat | unsat | tie


def load_truth(root: Path) -> dict[tuple[str, str, str], Truth]:
    """Known verdicts keyed by (suite, onnx, vnnlib) from every `<suite>.csv` under `root`."""
    disputed: dict[tuple[str, str, str], str] = {}
    for path in Path(root).glob("disputed-*.csv"):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                disputed[(row["benchmark"], normalize(row["onnx"]), normalize(row["vnnlib"]))] = row["majority"]
    truth = {}
    for path in Path(root).glob("*/*.csv"):
        suite = path.stem
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                key = (suite, normalize(row["onnx"]), normalize(row["vnnlib"]))
                truth[key] = Truth(row["verdict"], disputed.get(key))
    return truth


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
    table = POINTS_2023 if rules == "2023" else POINTS
    return sum(table.get(j, 0) for j in judgements)
