"""A compiled property as tensors, and the rule that decides when a bound proves it.

All cases are batched: boxes [B, *input_shape]; every disjunct's rows of a case stacked into one
matrix [B, m, n_out] (padded with rows that never count), so one bound pass covers the property.

Margin. A row is refuted when its lower bound exceeds the offset by more than (a strict row
`C y < d`: by at least)
    slack  +  rel(dtype) * (|d| + magnitude),
where `magnitude` is the size of the terms summed into the bound. The slack is the checker's
tolerance on the property (`Property.checker_slack`): for VNN-LIB 1.0 the competition checker's
1e-4 (a counterexample within 1e-4 of violating it is accepted), so we never claim a proof that a
checked counterexample could contradict; 0 for 2.0 queries, decided exactly. rel(dtype) is the
rounding allowance of a sum of 2048 terms, (2048 + 2) eps: 2.4e-4 in float32 and 4.6e-13 in
float64 (`core.rounding`). tests/test_soundness_random.py checks float32 bounds against sampled
values on random graphs; no test yet compares float32 with float64 bounds on the shared models.
Intermediate bounds carry the same kind of allowance (engine and interval rules), so a proof
stays sound when the arithmetic rounds. Rows that fail only the float32 margin are recomputed in
float64.

In a query decided exactly (slack 0), a row that reads one output with coefficient +1 or -1 is
also compared with that output's interval itself (`interval_refuted_rows`): an interval bound is a
float that the engine already made sound (its rules and the rounding allowances of every node),
and comparing it with d in float64 is exact, so it needs no margin. That decides `y < 0` where the
interval of y is [0, 1] (a softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verifier.bounds.core import SWEEP_TERMS, Interval, rounding
from verifier.vnnlib import Property

RELATIVE_MARGIN = {dtype: rounding(dtype, SWEEP_TERMS) for dtype in (torch.float32, torch.float64)}


def round_outward(lower: np.ndarray, upper: np.ndarray, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Cast float64 bounds to `dtype` so that the cast box contains the exact one."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    low = lower.astype(np_dtype)
    high = upper.astype(np_dtype)
    low = np.where(low.astype(np.float64) > lower, np.nextafter(low, np_dtype(-np.inf)), low)
    high = np.where(high.astype(np.float64) < upper, np.nextafter(high, np_dtype(np.inf)), high)
    return torch.from_numpy(np.ascontiguousarray(low)), torch.from_numpy(np.ascontiguousarray(high))


def round_inward(lower: np.ndarray, upper: np.ndarray, np_dtype) -> tuple[np.ndarray, np.ndarray]:
    """Bounds in `np_dtype` whose values all lie inside the exact float64 box (may cross if tiny)."""
    low = lower.astype(np_dtype)
    high = upper.astype(np_dtype)
    low = np.where(low.astype(np.float64) < lower, np.nextafter(low, np_dtype(np.inf)), low)
    high = np.where(high.astype(np.float64) > upper, np.nextafter(high, np_dtype(-np.inf)), high)
    return low, high


@dataclass
class Spec:
    """Tensors of a property for one network: boxes, stacked rows and which disjunct owns each row."""

    prop: Property
    box: Interval                # [B, *input_shape], rounded outward to the network dtype
    matrix: Tensor               # [B, m, n_out], network dtype
    offset: Tensor               # [B, m], float64
    row_disjunct: np.ndarray     # [B, m], disjunct index of each row, -1 for padding
    disjunct_counts: list[int]   # disjuncts per case
    strict: np.ndarray           # [B, m] bool, rows `C y < d`
    single_output: np.ndarray    # [B, m] the output j of a row that is +-y_j (float64 matrix), else -1
    single_sign: np.ndarray      # [B, m] that row's coefficient, +1 or -1 (0 elsewhere)

    @staticmethod
    def build(prop: Property, input_shape: tuple[int, ...], dtype: torch.dtype,
              device: torch.device | str = "cpu") -> Spec:
        cases = prop.cases
        lows, highs = zip(*(round_outward(c.lower, c.upper, dtype) for c in cases))
        box = Interval(torch.stack(lows).reshape(len(cases), *input_shape).to(device),
                       torch.stack(highs).reshape(len(cases), *input_shape).to(device))
        rows = max(1, max(sum(d.matrix.shape[0] for d in c.disjuncts) for c in cases))
        matrix = np.zeros((len(cases), rows, prop.num_outputs))
        offset = np.zeros((len(cases), rows))
        owner = np.full((len(cases), rows), -1)
        strict = np.zeros((len(cases), rows), dtype=bool)
        for b, case in enumerate(cases):
            r = 0
            for k, disjunct in enumerate(case.disjuncts):
                n = disjunct.matrix.shape[0]
                matrix[b, r:r + n] = disjunct.matrix
                offset[b, r:r + n] = disjunct.offset
                owner[b, r:r + n] = k
                strict[b, r:r + n] = disjunct.strict or False
                r += n
        single = (np.count_nonzero(matrix, axis=2) == 1) & (np.abs(matrix).max(axis=2, initial=0) == 1)
        column = np.abs(matrix).argmax(axis=2)
        sign = np.take_along_axis(matrix, column[..., None], axis=2)[..., 0]
        return Spec(prop, box, torch.from_numpy(matrix).to(dtype=dtype, device=device),
                    torch.from_numpy(offset), owner, [len(c.disjuncts) for c in cases], strict,
                    np.where(single, column, -1), np.where(single, sign, 0.0))

    @property
    def cases(self) -> int:
        return len(self.disjunct_counts)

    def to(self, dtype: torch.dtype) -> Spec:
        """The same spec for a network of another dtype (box re-rounded from the exact values)."""
        return Spec.build(self.prop, tuple(self.box.lower.shape[1:]), dtype, self.box.lower.device)

    def refuted_rows(self, lower: Tensor, magnitude: Tensor, dtype: torch.dtype) -> np.ndarray:
        """[B, m] bool: rows whose lower bound exceeds the offset by the margin."""
        return _refuted(lower, magnitude, self.offset.numpy(), self.row_disjunct, self.strict, self.prop.checker_slack,
                        dtype)

    def interval_refuted_rows(self, outputs: Interval) -> np.ndarray:
        """[B, m] bool: rows +-y_j (one coefficient, +1 or -1) that the interval of y_j refutes,
        `outputs` [B, *output_shape] (see the module docstring); none for a property with a
        checker's slack (VNN-LIB 1.0), whose checker may round d to float32."""
        if self.prop.checker_slack > 0:
            return np.zeros_like(self.strict)
        lower = outputs.lower.detach().double().cpu().numpy().reshape(self.cases, -1)
        upper = outputs.upper.detach().double().cpu().numpy().reshape(self.cases, -1)
        column = np.maximum(self.single_output, 0)
        # the row's least value: y_j's lower bound, or -(its upper bound)
        least = np.where(self.single_sign > 0, np.take_along_axis(lower, column, axis=1),
                         -np.take_along_axis(upper, column, axis=1))
        slack = self.prop.checker_slack
        with np.errstate(invalid="ignore"):
            excess = least - self.offset.numpy()
            refuted = np.where(self.strict, excess >= slack, excess > slack)
        return refuted & (self.single_output >= 0) & (self.row_disjunct >= 0)

    def proved_cases(self, refuted: np.ndarray) -> np.ndarray:
        """[B] bool: cases where every disjunct has at least one refuted row."""
        return np.array([self.case_proved(b, refuted[b:b + 1])[0] for b in range(self.cases)], dtype=bool)

    def case_refuted_rows(self, case: int, lower: Tensor, magnitude: Tensor, dtype: torch.dtype) -> np.ndarray:
        """[N, m] bool: `refuted_rows` for N bounds [N, m] of the rows of one case (sub-domains)."""
        return _refuted(lower, magnitude, self.offset.numpy()[case], self.row_disjunct[case], self.strict[case],
                        self.prop.checker_slack, dtype)

    def case_proved(self, case: int, refuted: np.ndarray) -> np.ndarray:
        """[N] bool: which of N row masks [N, m] of one case refute every disjunct of it."""
        owners = self.row_disjunct[case]
        proved = np.ones(refuted.shape[0], dtype=bool)
        for k in range(self.disjunct_counts[case]):
            proved &= refuted[:, owners == k].any(axis=1)
        return proved

    def margins(self, outputs: Tensor) -> Tensor:
        """Violation margin per (sample, case, disjunct): max over its rows of (C y - d); <= 0 violates
        (a strict row at C y = d counts as the least positive float: not violated).

        `outputs` [N, B, n_out]; the result is [N, B, K] with K the most disjuncts of any case
        (+inf for a case's missing disjuncts, -inf for a disjunct without rows: always violated).
        """
        values = torch.einsum("bmo,nbo->nbm", self.matrix.to(outputs.dtype), outputs)
        values = values - self.offset.to(outputs)
        # a strict row `C y < d` holds with C y = d (margin 0) only in the non-strict reading
        at_bound = torch.from_numpy(self.strict).to(values.device) & (values == 0)
        values = values.masked_fill(at_bound, torch.finfo(values.dtype).tiny)
        most = max(self.disjunct_counts)
        owner = torch.from_numpy(self.row_disjunct).to(outputs.device)
        result = outputs.new_full((outputs.shape[0], self.cases, most + 1), -torch.inf)
        index = torch.where(owner >= 0, owner, most).unsqueeze(0).expand_as(values)
        result = result.scatter_reduce(2, index, values, reduce="amax", include_self=True)[..., :most]
        counts = torch.tensor(self.disjunct_counts, device=outputs.device)
        missing = torch.arange(most, device=outputs.device).unsqueeze(0) >= counts.unsqueeze(1)
        return result.masked_fill(missing.unsqueeze(0), torch.inf)

    def case_margins(self, case: int, outputs: Tensor) -> Tensor:
        """[N] the most violated disjunct's margin of case `case` (<= 0 violates) for outputs [N, n_out]."""
        if self.disjunct_counts[case] == 0:  # nothing to violate
            return outputs.new_full((outputs.shape[0],), torch.inf)
        # the batched margins of every case at these outputs (a few cases: cheap beside the network)
        every = self.margins(outputs.unsqueeze(1).expand(-1, self.cases, -1))
        return every[:, case].amin(1)


def _refuted(lower: Tensor, magnitude: Tensor, offset: np.ndarray, owner: np.ndarray, strict: np.ndarray,
             slack: float, dtype: torch.dtype) -> np.ndarray:
    lower = lower.detach().double().cpu().numpy()
    magnitude = magnitude.detach().double().cpu().numpy()
    margin = slack + RELATIVE_MARGIN[dtype] * (np.abs(offset) + magnitude)
    with np.errstate(invalid="ignore"):
        excess = lower - offset
        return np.where(strict, excess >= margin, excess > margin) & (owner >= 0)
