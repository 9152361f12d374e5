"""Property tensors, margins and outward rounding."""

from __future__ import annotations

import numpy as np
import torch

from verifier.bounds.core import Interval
from verifier.spec import Spec, round_inward, round_outward
from verifier.vnnlib import parse_text
from verifier.vnnlib.query import parse_query

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
    assert spec.prop.checker_slack == 1e-4
    close = spec.refuted_rows(torch.tensor([[0.0, 2 + spec.prop.checker_slack / 2, 0.0], [0.0, 0, 0]]),
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


QUERY = """(vnnlib-version <2.0>)
(declare-network N (declare-input X float32 [1]) (declare-output Y float32 [2]))
(assert (and (>= X[0] 0.0) (<= X[0] 1.0)))
(assert (or (< Y[0] 0.0) (> Y[0] 1.0) (<= Y[1] 0.0) (<= (* 1.0000001 Y[1]) -2.0)))"""


def _query_spec():
    prop, observables = parse_query(QUERY, "q.vnnlib").compile()
    assert [o.elements for o in observables] == [(("Y", 0),), (("Y", 1),)]
    return Spec.build(prop, (1,), torch.float32)


def test_a_query_is_decided_exactly_with_its_strict_rows():
    spec = _query_spec()
    assert spec.prop.checker_slack == 0 and not spec.prop.real_arithmetic
    # rows: y0 < 0, -y0 < -1, y1 <= 0, 1.0000001 y1 <= -2 (one row per disjunct)
    assert spec.strict[0].tolist() == [True, True, False, False]
    assert spec.single_output[0].tolist() == [0, 0, 1, -1] and spec.single_sign[0].tolist() == [1, -1, 1, 0]
    at_offsets = torch.tensor([[0.0, -1.0, 0.0, -2.0]])
    # at exactly its offset a strict row is refuted (C y >= d) where the margin is 0 (d = 0, no
    # terms summed), a non-strict one is not; -y0 < -1 keeps the float32 margin of |d|
    assert spec.refuted_rows(at_offsets, torch.zeros_like(at_offsets), torch.float32)[0].tolist() == \
        [True, False, False, False]
    # the strict row at equality does not violate; the non-strict one does
    margins = spec.margins(torch.tensor([[[0.0, 0.0]]]))
    assert margins[0, 0, 0] > 0 and margins[0, 0, 2] == 0


def test_rows_of_one_output_are_compared_with_its_interval_exactly():
    spec = _query_spec()
    softmax_like = Interval(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 3.0]]))
    assert spec.interval_refuted_rows(softmax_like)[0].tolist() == [True, True, False, False]
    below = Interval(torch.tensor([[-1e-30, 2e-30]]), torch.tensor([[1.0000001, 3.0]]))
    # a scaled row (coefficient 1.0000001 rounds to 1 in float32) is never read as one output
    assert spec.interval_refuted_rows(below)[0].tolist() == [False, False, True, False]
    # VNN-LIB 1.0: the checker's slack and a float32 d leave these rows to the general margin
    spec_1_0 = Spec.build(parse_text(TEXT), (2,), torch.float32)
    assert not spec_1_0.interval_refuted_rows(Interval(torch.full((2, 2), 100.0), torch.full((2, 2), 100.0))).any()
