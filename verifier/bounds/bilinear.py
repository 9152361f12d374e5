"""Products of two variables: element-wise Mul, MatMul, and quotients as x * (1/y).

Each product term x*y with x in [lx, ux], y in [ly, uy] is bounded by the McCormick planes. We use
the average of the two planes on each side, which has the same gap (rx * ry) at the centre as
either plane and needs no choice:
    lower:  cy x + cx y - (lx ly + ux uy) / 2
    upper:  cy x + cx y - (lx uy + ux ly) / 2
Both lines share their slopes, so a backward step sends A * cy to x and A * cx to y whatever the
sign of A, and only the bias depends on the sign. A zero-width operand makes the planes exact.

alpha-CROWN mixes the two planes of each side instead, with a weight per row and output element
(t for the lower side, s for the upper, each in [0, 1]; 0.5 is the average above):
    lower:  t (ly x + lx y - lx ly) + (1 - t) (uy x + ux y - ux uy)
    upper:  s (uy x + lx y - lx uy) + (1 - s) (ly x + ux y - ux ly)
Any mix of valid planes is valid. In a matrix product the terms x_ik y_kj of one output (i, j)
share its weights, so the parameters are shaped like the coefficients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.bounds.core import Backward, Interval, Rule, Unsupported, rounding, row_sum, sum_to_shape
from verifier.bounds.relaxation import AlphaSlot
from verifier.bounds.shape import align_rank
from verifier.bounds.smooth import Power, reciprocal


class Multiply(Rule):
    """Element-wise x * y of two variables (broadcast)."""

    needs_bounds = True
    has_alpha = True

    def __init__(self, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.x_shape, self.y_shape = x_shape, y_shape

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x * y

    def ibp(self, x: Interval, y: Interval) -> Interval:
        products = torch.stack([x.lower * y.lower, x.lower * y.upper, x.upper * y.lower, x.upper * y.upper])
        low, high = products.amin(0), products.amax(0)
        error = rounding(low.dtype, 1) * torch.maximum(low.abs(), high.abs())
        return Interval(low - error, high + error)

    def backward(self, coeffs: Tensor, x: Interval, y: Interval, alpha: AlphaSlot | None = None) -> Backward:
        positive = coeffs.clamp(min=0)
        negative = coeffs - positive
        lx, ux, ly, uy = (t.unsqueeze(1) for t in (x.lower, x.upper, y.lower, y.upper))
        if alpha is not None:
            t, s = _mixes(alpha, coeffs)
            # each side's slopes and offset: the weighted planes (module docstring)
            lower_offset = t * (lx * ly) + (1 - t) * (ux * uy)
            upper_offset = s * (lx * uy) + (1 - s) * (ux * ly)
            to_x = positive * (uy - t * (uy - ly)) + negative * (ly + s * (uy - ly))
            to_y = positive * (ux - t * (ux - lx)) + negative * (ux - s * (ux - lx))
            bias = -row_sum(positive * lower_offset + negative * upper_offset)
            return Backward([sum_to_shape(to_x, self.x_shape), sum_to_shape(to_y, self.y_shape)], bias)
        lower_offset = (lx * ly + ux * uy) / 2
        upper_offset = (lx * uy + ux * ly) / 2
        bias = -row_sum(positive * lower_offset + negative * upper_offset)
        to_x = sum_to_shape(coeffs * y.center.unsqueeze(1), self.x_shape)
        to_y = sum_to_shape(coeffs * x.center.unsqueeze(1), self.y_shape)
        return Backward([to_x, to_y], bias)


class MatMulVariables(Rule):
    """x @ y of two variables over the last two axes (leading axes broadcast)."""

    needs_bounds = True
    sums_products = True
    has_alpha = True

    def __init__(self, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.x_shape, self.y_shape = x_shape, y_shape

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x @ y

    @property
    def rounding_terms(self) -> int:
        return self.x_shape[-1] + 1

    def ibp(self, x: Interval, y: Interval) -> Interval:
        cx, rx, cy, ry = x.center, x.radius, y.center, y.radius
        radius = cx.abs() @ ry + rx @ cy.abs() + rx @ ry
        magnitude = (cx.abs() + rx) @ (cy.abs() + ry)
        return Interval.from_center(cx @ cy, radius, magnitude, 3 * x.lower.shape[-1])

    def backward(self, coeffs: Tensor, x: Interval, y: Interval, alpha: AlphaSlot | None = None) -> Backward:
        positive = coeffs.clamp(min=0)
        negative = coeffs - positive
        lx, ux, ly, uy = (t.unsqueeze(1) for t in (x.lower, x.upper, y.lower, y.upper))
        if alpha is not None:
            t, s = _mixes(alpha, coeffs)
            # the weight of each operand's lower and upper bound in the slopes of the other
            on_lower_y, on_upper_y = positive * t + negative * (1 - s), positive * (1 - t) + negative * s
            on_lower_x, on_upper_x = positive * t + negative * s, positive * (1 - t) + negative * (1 - s)
            lower_offset = t * (lx @ ly) + (1 - t) * (ux @ uy)
            upper_offset = s * (lx @ uy) + (1 - s) * (ux @ ly)
            bias = -row_sum(positive * lower_offset + negative * upper_offset)
            to_x = on_lower_y @ ly.transpose(-1, -2) + on_upper_y @ uy.transpose(-1, -2)
            to_y = lx.transpose(-1, -2) @ on_lower_x + ux.transpose(-1, -2) @ on_upper_x
            return Backward([sum_to_shape(to_x, self.x_shape), sum_to_shape(to_y, self.y_shape)], bias)
        lower_offset = (lx @ ly + ux @ uy) / 2
        upper_offset = (lx @ uy + ux @ ly) / 2
        bias = -row_sum(positive * lower_offset + negative * upper_offset)
        to_x = sum_to_shape(coeffs @ y.center.unsqueeze(1).transpose(-1, -2), self.x_shape)
        to_y = sum_to_shape(x.center.unsqueeze(1).transpose(-1, -2) @ coeffs, self.y_shape)
        return Backward([to_x, to_y], bias)


def _mixes(alpha: AlphaSlot, coeffs: Tensor) -> tuple[Tensor, Tensor]:
    """The planes' weights t (lower side) and s (upper side), each shaped like `coeffs` and in
    [0, 1], starting at the average."""
    def start() -> list[Tensor]:
        half = torch.full_like(coeffs, 0.5)
        return [half, half.clone()]

    return tuple(alpha.values(start, lambda p: [q.clamp(0, 1) for q in p]))


def multiply(builder, x, y):
    if x is y:
        return builder.add(Power(2.0), [x])
    rank = max(len(x.shape), len(y.shape))
    x, y = align_rank(builder, x, rank), align_rank(builder, y, rank)
    return builder.add(Multiply(x.shape, y.shape), [x, y])


def divide(builder, x, y):
    return multiply(builder, x, reciprocal(builder, y))


def matmul_variables(builder, x, y):
    if len(x.shape) < 2 or len(y.shape) < 2:
        raise Unsupported("MatMul of two variables with a vector operand")
    rank = max(len(x.shape), len(y.shape))
    x, y = align_rank(builder, x, rank), align_rank(builder, y, rank)
    return builder.add(MatMulVariables(x.shape, y.shape), [x, y])
