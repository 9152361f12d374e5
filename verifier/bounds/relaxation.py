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


@dataclass
class LinearRelaxation:
    """Slopes and intercepts, each [B, *shape] (shared by all rows) or [B, m, *shape] (per row)."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


def relaxed_backward(coeffs: Tensor, relaxation: LinearRelaxation) -> Backward:
    """Coefficients on the input and the bias of the lower bound of <coeffs, f(x)>."""

    def per_row(t: Tensor) -> Tensor:
        return t.unsqueeze(1) if t.dim() == coeffs.dim() - 1 else t

    positive = coeffs.clamp(min=0)
    negative = coeffs - positive
    new = positive * per_row(relaxation.lower_slope) + negative * per_row(relaxation.upper_slope)
    bias = row_sum(positive * per_row(relaxation.lower_intercept) + negative * per_row(relaxation.upper_intercept))
    return Backward([new], bias)


class Elementwise(Rule):
    """An element-wise operator with a two-line relaxation; subclasses implement `relax`."""

    needs_bounds = True

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
