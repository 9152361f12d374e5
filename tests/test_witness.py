"""Counterexample confirmation and the results file format."""

from __future__ import annotations

import numpy as np

from tests.conftest import EXAMPLES
from verifier.check import read_assignment
from verifier.vnnlib import parse_file
from verifier.witness import Counterexample, OnnxChecker, format_assignment, write_results

MODEL = str(EXAMPLES / "classifier.onnx")


def test_assignment_round_trips_exactly(tmp_path):
    example = Counterexample(np.array([0.1, np.float32(1 / 3)], dtype=np.float64), np.array([1e-5, -2.5]), 0, 0)
    path = tmp_path / "r.txt"
    write_results(str(path), "sat", example)
    text = path.read_text()
    assert text.startswith("sat\n((X_0 0.1)\n (X_1 ")
    assert "  " not in text.replace("\n ", "")  # exactly one space inside every pair
    x, y = read_assignment(str(path))
    assert x.tolist() == example.inputs.tolist() and y.tolist() == example.outputs.tolist()
    assert format_assignment(example).endswith("(Y_1 -2.5))\n")


def test_confirm_requires_a_point_inside_the_box_and_an_exact_violation():
    prop = parse_file(EXAMPLES / "classifier_radius_0.5.vnnlib")
    checker = OnnxChecker(MODEL, "input", (1, 4), np.float32)
    case = prop.cases[0]
    outside = case.upper + 1.0
    assert checker.confirm(prop, outside) is None
    center = (case.lower + case.upper) / 2  # the property holds at the centre
    assert checker.confirm(prop, center) is None
