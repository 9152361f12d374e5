"""Property tensors, margins and outward rounding."""

from __future__ import annotations

import numpy as np
import torch

from verifier.spec import CHECKER_SLACK, Spec, round_inward, round_outward
from verifier.vnnlib import parse_text

TEXT = """(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)
(assert (or (and (>= X_0 0.1) (<= X_0 0.30000000000000004) (>= X_1 -1) (<= X_1 1) (<= Y_0 Y_1) (<= Y_0 2))
            (and (>= X_0 0.1) (<= X_0 0.30000000000000004) (>= X_1 -1) (<= X_1 1) (>= Y_0 7))
            (and (>= X_0 5) (<= X_0 6) (>= X_1 0) (<= X_1 0) (>= Y_1 1))))"""


def test_outward_and_inward_rounding():
    lower = np.array([0.1, -0.30000000000000004])
    upper = np.array([0.2, 1 / 3])
    low, high = round_outward(lower, upper, torch.float32)
    assert np.all(low.double().numpy() <= lower) and np.all(high.double().numpy() >= upper)
    low, high = round_inward(lower, upper, np.float32)
    assert np.all(low.astype(np.float64) >= lower) and np.all(high.astype(np.float64) <= upper)


def test_rows_cases_and_proofs():
    spec = Spec.build(parse_text(TEXT), (2,), torch.float32)
    assert spec.cases == 2 and spec.disjunct_counts == [2, 1]
    assert spec.matrix.shape == (2, 3, 2)
    assert spec.row_disjunct.tolist() == [[0, 0, 1], [0, -1, -1]]
    lower = torch.tensor([[-1.0, 3.0, 1.0], [5.0, 9.0, 9.0]])
    magnitude = torch.zeros_like(lower)
    refuted = spec.refuted_rows(lower, magnitude, torch.float32)
    # padding rows never count; a row at its offset plus less than the checker's slack does not count
    assert refuted.tolist() == [[False, True, True], [True, False, False]]
    assert spec.proved_cases(refuted).tolist() == [True, True]
    close = spec.refuted_rows(torch.tensor([[0.0, 2 + CHECKER_SLACK / 2, 0.0], [0.0, 0, 0]]),
                              magnitude, torch.float32)
    assert not close[0, 1]


def test_margin_grows_with_the_magnitude_of_the_terms():
    spec = Spec.build(parse_text(TEXT), (2,), torch.float32)
    lower = torch.tensor([[0.0, 2.01, 0.0], [0.0, 0, 0]])
    small = spec.refuted_rows(lower, torch.full_like(lower, 1.0), torch.float32)
    large = spec.refuted_rows(lower, torch.full_like(lower, 1e3), torch.float32)
    assert small[0, 1] and not large[0, 1]


def test_margins_of_outputs():
    spec = Spec.build(parse_text(TEXT), (2,), torch.float32)
    outputs = torch.tensor([[[1.0, 3.0], [0.0, 2.0]]])  # one sample, two cases
    margins = spec.margins(outputs)
    assert margins.shape == (1, 2, 2)
    np.testing.assert_allclose(margins[0, 0].numpy(), [max(1 - 3, 1 - 2), 7 - 1])
    assert margins[0, 1, 0] == 1 - 2 and margins[0, 1, 1] == float("inf")


def test_case_margins_match_the_batched_margins():
    text = ("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)"
            "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 Y_1) (<= Y_0 0.5))"
            "(and (>= X_0 2) (<= X_0 3) (>= Y_1 1))(and (>= X_0 2) (<= X_0 3) (>= Y_0 2))))")
    spec = Spec.build(parse_text(text), (1,), torch.float64)
    outputs = torch.randn(7, spec.cases, 2, dtype=torch.float64)
    batched = spec.margins(outputs).amin(2)
    for case in range(spec.cases):
        assert torch.equal(spec.case_margins(case, outputs[:, case]), batched[:, case])
