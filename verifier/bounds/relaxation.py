"""The shared backward rule of element-wise operators relaxed by two lines.

An element-wise operator z = f(x) declares, for input bounds [l, u], lines with
`lower_slope * x + lower_intercept <= f(x) <= upper_slope * x + upper_intercept` on [l, u]. The
lower bound of <A, z> then takes the lower line where A >= 0 and the upper line where A < 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.bounds.core import Backward, Interval, Rule, row_sum
from verifier.bounds.patches import Patches


@dataclass
class LinearRelaxation:
    """Slopes and intercepts, each [B, *shape] (shared by all rows) or [B, m, *shape] (per row)."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


def relaxed_backward(coeffs: Tensor, relaxation: LinearRelaxation) -> Backward:
    """Coefficients on the input and the bias of the lower bound of <coeffs, f(x)>.

    With A- = min(A, 0): A_x = A * lower_slope + A- * (upper_slope - lower_slope), and the bias
    is <A, lower_intercept> + <A-, upper_intercept - lower_intercept> (fewer passes over A than
    splitting it into both signs).
    """
    if isinstance(coeffs, Patches):
        return _relaxed_patches(coeffs, relaxation)
    negative = coeffs.clamp(max=0)
    slope_gap = relaxation.upper_slope - relaxation.lower_slope
    new = torch.addcmul(coeffs * _per_row(relaxation.lower_slope, coeffs), negative, _per_row(slope_gap, coeffs))
    bias = _inner(negative, relaxation.upper_intercept - relaxation.lower_intercept)
    if bool(relaxation.lower_intercept.any()):
        bias = bias + _inner(coeffs, relaxation.lower_intercept)
    return Backward([new], bias)


def _relaxed_patches(coeffs: Patches, relaxation: LinearRelaxation) -> Backward:
    """The same step on window coefficients (relaxations shared by all rows)."""
    values = coeffs.values
    if relaxation.lower_slope.dim() != len(coeffs.shape) + 1:
        return relaxed_backward(coeffs.to_dense(), relaxation)  # per-row relaxations: go dense
    negative = values.clamp(max=0)
    lower_slope, slope_gap, intercept_gap, lower_intercept = coeffs.windows(
        relaxation.lower_slope, relaxation.upper_slope - relaxation.lower_slope,
        relaxation.upper_intercept - relaxation.lower_intercept, relaxation.lower_intercept)
    new = torch.addcmul(values * lower_slope, negative, slope_gap)
    bias = (negative * intercept_gap + values * lower_intercept).sum(dim=(2, 3, 4))
    return Backward([coeffs.with_values(new)], bias)


def _per_row(tensor: Tensor, coeffs: Tensor) -> Tensor:
    return tensor.unsqueeze(1) if tensor.dim() == coeffs.dim() - 1 else tensor


def _inner(coeffs: Tensor, values: Tensor) -> Tensor:
    """<coeffs[b, r], values[b]> for every row [B, m], or with per-row values [B, m, *shape]."""
    if values.dim() == coeffs.dim():
        return row_sum(coeffs * values)
    flat = coeffs.reshape(coeffs.shape[0], coeffs.shape[1], -1)
    return torch.bmm(flat, values.reshape(values.shape[0], -1, 1)).squeeze(-1)


class Elementwise(Rule):
    """An element-wise operator with a two-line relaxation; subclasses implement `relax`."""

    needs_bounds = True
    accepts_patches = True

    def relax(self, x: Interval) -> LinearRelaxation:
        raise NotImplementedError

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        # The same input bounds are crossed by many backward sweeps: relax them once.
        cached = self.__dict__.get("_relaxed")
        if cached is None or cached[0] is not x:
            cached = (x, self.relax(x))
            self.__dict__["_relaxed"] = cached
        return relaxed_backward(coeffs, cached[1])


def extremum_intercepts(
    f, slope: Tensor, lower: Tensor, upper: Tensor, critical: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """Min and max of `f(x) - slope * x` on [lower, upper], given every critical point candidate.

    The extremum of a differentiable function on an interval is at an end or at a critical point
    (where f'(x) = slope); `critical` lists the candidates (NaN where there is none), which are
    ignored outside [lower, upper]. A small outward slack covers the rounding of this evaluation.
    """
    candidates = [lower, upper] + critical
    values = []
    for point in candidates:
        inside = (point >= lower) & (point <= upper)
        safe = torch.where(inside, point, lower)
        values.append((f(safe) - slope * safe, inside))
    low = torch.stack([torch.where(ok, v, torch.full_like(v, torch.inf)) for v, ok in values]).amin(0)
    high = torch.stack([torch.where(ok, v, torch.full_like(v, -torch.inf)) for v, ok in values]).amax(0)
    eps = torch.finfo(slope.dtype).eps
    magnitude = 1 + slope.abs() * torch.maximum(lower.abs(), upper.abs()) + torch.maximum(low.abs(), high.abs())
    slack = 8 * eps * magnitude
    return low - slack, high + slack
