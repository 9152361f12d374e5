"""Bounding a property with a chosen method, and deciding which of its cases are proved.

Rows that the float32 bound clears only within its rounding margin are recomputed in float64
before they count (see `verifier/spec.py` for the margin).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from verifier.bounds.core import Interval
from verifier.bounds.engine import (
    Errors,
    LinearBound,
    OutOfTime,
    backward_bound,
    interval_bounds,
    interval_concretize,
)
from verifier.bounds.intermediate import intermediate_bounds, resolve, sweeps_over_forward
from verifier.bounds.network import Network
from verifier.bounds.optimize import optimize_bounds
from verifier.settings import AlphaSettings
from verifier.spec import Spec


@dataclass
class Proof:
    """Outcome of one bound pass over a property."""

    method: str
    proved: np.ndarray      # [B] bool, per case
    lower: np.ndarray       # [B, m] float64 lower bounds of the rows
    seconds: float
    rechecked: bool         # whether float64 was needed
    intervals: list[Interval | None] | None = None  # every node's bounds (CROWN methods), [B, *shape]
    interrupted: bool = False  # the deadline came before the bound did (nothing proved)
    bound: LinearBound | None = None  # the rows' bound as computed [B, m] (network dtype), unless cut short
    # CROWN with forward then backward intermediate bounds (`both`): the sweeps' time over the
    # forward pass's, which input splitting's choice of method reads; None for other passes
    sweep_ratio: float | None = None

    @property
    def all_proved(self) -> bool:
        return bool(self.proved.all())


def spec_bound(network: Network, spec: Spec, method: str, alpha: AlphaSettings | None = None,
               time_left: Callable[[], float] | None = None, intermediate: str = "auto",
               seconds: dict[str, float] | None = None) -> tuple[LinearBound, list[Interval | None]]:
    """Lower bounds [B, m] of the rows `C y` over each case's box, and the intervals of every
    node that the bound used: IBP's, or for CROWN methods those found by the `intermediate`
    method (see verifier.bounds.intermediate; CROWN's time of each part goes to `seconds`).

    alpha-CROWN stops early once every case is proved, and at `time_left() <= 0` with its best
    bound so far; CROWN, or alpha-CROWN before its first bound, raises OutOfTime there.
    """
    coeffs = spec.matrix.reshape(spec.cases, spec.matrix.shape[1], *network.output_shape)
    if method == "ibp":
        bounds = interval_bounds(network, spec.box)
        return interval_concretize(coeffs, bounds[network.output]), bounds
    pure_ibp = interval_concretize(coeffs, interval_bounds(network, spec.box)[network.output])
    if method == "crown":
        errors: Errors = {}
        bounds = intermediate_bounds(network, spec.box, resolve(intermediate, spec.box), errors=errors,
                                     time_left=time_left, seconds=seconds)
        return tightest([backward_bound(network, network.output, coeffs, bounds, errors=errors),
                         interval_concretize(coeffs, bounds[network.output]), pure_ibp]), bounds
    if method == "alpha-crown":
        def done(bound: LinearBound) -> bool:
            return bool(spec.proved_cases(spec.refuted_rows(bound.lower, bound.magnitude, network.dtype)).all())

        result = optimize_bounds(network, spec.box, coeffs, alpha or AlphaSettings(), time_left, done, intermediate)
        return tightest([result.bound, interval_concretize(coeffs, result.intermediate[network.output]),
                         pure_ibp]), result.intermediate
    raise ValueError(f"unknown bound method '{method}'")


def tightest(bounds: list[LinearBound]) -> LinearBound:
    """Row by row, the largest of several sound lower bounds (with its own magnitude)."""
    best = bounds[0]
    for other in bounds[1:]:
        better = other.lower > best.lower
        best = LinearBound(torch.where(better, other.lower, best.lower),
                           torch.where(better, other.magnitude, best.magnitude))
    return best


def prove(network: Network, spec: Spec, method: str, alpha: AlphaSettings | None = None,
          time_left: Callable[[], float] | None = None, keep_intervals: bool = True,
          intermediate: str = "auto") -> Proof:
    """Bound the property with `method` (its intermediate bounds by `intermediate`); re-check
    close rows in float64. The node intervals are kept in the result only with `keep_intervals`
    (on large models they take gigabytes)."""
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    try:
        with torch.no_grad():
            bound, intervals = spec_bound(network, spec, method, alpha, time_left, intermediate, seconds)
    except OutOfTime:  # nothing proved; the caller goes on with what time is left (the attack)
        lower = np.full((spec.cases, spec.matrix.shape[1]), -np.inf)
        return Proof(method, np.zeros(spec.cases, dtype=bool), lower, time.perf_counter() - start, False,
                     interrupted=True)
    refuted = spec.refuted_rows(bound.lower, bound.magnitude, network.dtype) \
        | spec.interval_refuted_rows(intervals[network.output])
    if not keep_intervals or method == "ibp":  # branch and bound starts from CROWN's intervals only
        intervals = None  # before a float64 re-check needs the memory
    proved = spec.proved_cases(refuted)
    lower = bound.lower.double().cpu().numpy()
    rechecked = False
    if not proved.all() and network.dtype != torch.float64:
        with np.errstate(invalid="ignore"):
            close = (lower > spec.offset.numpy()) & ~refuted & (spec.row_disjunct >= 0)
        # time permitting: without the re-check the rows stay unproved, which is sound
        if close.any() and (time_left is None or time_left() > 0):
            rechecked = True
            wide = copy.deepcopy(network).double()
            wide_spec = spec.to(torch.float64)
            try:
                with torch.no_grad():
                    wide_bound, _ = spec_bound(wide, wide_spec, method, alpha, time_left, intermediate)
                refuted |= wide_spec.refuted_rows(wide_bound.lower, wide_bound.magnitude, torch.float64)
                proved = spec.proved_cases(refuted)
            except OutOfTime:
                pass  # the float32 result stands
    return Proof(method, proved, lower, time.perf_counter() - start, rechecked, intervals, bound=bound,
                 sweep_ratio=sweeps_over_forward(seconds))
