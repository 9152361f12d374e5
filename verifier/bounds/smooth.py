"""Smooth univariate functions: Exp, Log, Sqrt, Reciprocal, Pow with a constant exponent, Sin, Cos.

One recipe serves them all. For bounds [l, u] the slope of each line is chosen by the curvature
(chord on the side where f bends towards it, tangent at the middle on the other; the chord slope
for both lines where f changes curvature), and the intercept is the exact extremum of f(x) - a x
on [l, u], found among the ends and the listed critical points (f'(x) = a). IBP is the same
extremum with a = 0. Outside a function's domain the bounds are infinite (sound, vacuous).
"""

from __future__ import annotations

import math

import torch
from onnx2torch.node_converters.pow import OnnxPow, OnnxSqrt
from onnx2torch.node_converters.reciprocal import OnnxReciprocal
from torch import Tensor

from verifier.bounds.core import Interval, Unsupported, register
from verifier.bounds.relaxation import Elementwise, LinearRelaxation, extremum_intercepts

CONVEX, CONCAVE, MIXED = 1, -1, 0


class Smooth(Elementwise):
    """Subclasses give f, f', the critical points of f(x) - a x, the curvature and the domain."""

    def f(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def critical_points(self, slope: Tensor, lower: Tensor, upper: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def curvature(self, lower: Tensor, upper: Tensor) -> Tensor:
        """CONVEX, CONCAVE or MIXED per element on [lower, upper]."""
        raise NotImplementedError

    def in_domain(self, lower: Tensor, upper: Tensor) -> Tensor:
        return torch.ones_like(lower, dtype=torch.bool)

    def forward(self, x: Tensor) -> Tensor:
        return self.f(x)

    def _safe(self, x: Interval) -> tuple[Tensor, Tensor, Tensor]:
        ok = self.in_domain(x.lower, x.upper) & torch.isfinite(x.lower) & torch.isfinite(x.upper)
        default = self.default_point(x.lower)
        return ok, torch.where(ok, x.lower, default), torch.where(ok, x.upper, default)

    def default_point(self, like: Tensor) -> Tensor:
        return torch.ones_like(like)

    def ibp(self, x: Interval) -> Interval:
        ok, lower, upper = self._safe(x)
        zero = torch.zeros_like(lower)
        low, high = extremum_intercepts(self.f, zero, lower, upper, self.critical_points(zero, lower, upper))
        return Interval(torch.where(ok, low, -torch.inf), torch.where(ok, high, torch.inf))

    def relax(self, x: Interval) -> LinearRelaxation:
        ok, lower, upper = self._safe(x)
        width = upper - lower
        degenerate = width <= 1e-12 * (1 + upper.abs())
        middle = (lower + upper) / 2
        chord = (self.f(upper) - self.f(lower)) / torch.where(degenerate, 1.0, width)
        chord = torch.where(degenerate, self.derivative(middle), chord)
        tangent = self.derivative(middle)
        bend = self.curvature(lower, upper)
        lower_slope = torch.where(bend == CONVEX, tangent, chord)
        upper_slope = torch.where(bend == CONCAVE, tangent, chord)
        low, _ = extremum_intercepts(self.f, lower_slope, lower, upper,
                                     self.critical_points(lower_slope, lower, upper))
        _, high = extremum_intercepts(self.f, upper_slope, lower, upper,
                                      self.critical_points(upper_slope, lower, upper))
        zero = torch.zeros_like(lower)
        return LinearRelaxation(torch.where(ok, lower_slope, zero), torch.where(ok, low, -torch.inf),
                                torch.where(ok, upper_slope, zero), torch.where(ok, high, torch.inf))


class Exp(Smooth):
    def f(self, x):
        return torch.exp(x)

    def derivative(self, x):
        return torch.exp(x)

    def critical_points(self, slope, lower, upper):
        return [torch.where(slope > 0, torch.log(slope.clamp(min=1e-300)), torch.nan)]

    def curvature(self, lower, upper):
        return torch.full_like(lower, CONVEX)


class Log(Smooth):
    def f(self, x):
        return torch.log(x)

    def derivative(self, x):
        return 1 / x

    def critical_points(self, slope, lower, upper):
        return [torch.where(slope > 0, 1 / slope, torch.nan)]

    def curvature(self, lower, upper):
        return torch.full_like(lower, CONCAVE)

    def in_domain(self, lower, upper):
        return lower > 0


class Sqrt(Smooth):
    def f(self, x):
        return torch.sqrt(x)

    def derivative(self, x):
        return 0.5 / torch.sqrt(x)

    def critical_points(self, slope, lower, upper):
        return [torch.where(slope > 0, 0.25 / (slope * slope), torch.nan)]

    def curvature(self, lower, upper):
        return torch.full_like(lower, CONCAVE)

    def in_domain(self, lower, upper):
        return lower >= 0

    def default_point(self, like):
        return torch.ones_like(like)


class Reciprocal(Smooth):
    """1/x on intervals that exclude 0: convex for x > 0, concave for x < 0."""

    def f(self, x):
        return 1 / x

    def derivative(self, x):
        return -1 / (x * x)

    def critical_points(self, slope, lower, upper):
        root = torch.where(slope < 0, torch.sqrt(-1 / slope.clamp(max=-1e-300)), torch.nan)
        return [root, -root]

    def curvature(self, lower, upper):
        return torch.where(lower > 0, CONVEX, CONCAVE).to(lower.dtype)

    def in_domain(self, lower, upper):
        return (lower > 0) | (upper < 0)


class Power(Smooth):
    """x ** p for a constant p: integers on the whole line, other exponents for x > 0."""

    def __init__(self, exponent: float) -> None:
        super().__init__()
        self.exponent = float(exponent)
        self.integer = self.exponent == round(self.exponent)

    def f(self, x):
        return torch.pow(x, self.exponent)

    def derivative(self, x):
        return self.exponent * torch.pow(x, self.exponent - 1)

    def critical_points(self, slope, lower, upper):
        p = self.exponent
        ratio = slope / p
        if self.integer and int(p) % 2 == 0:  # p - 1 odd: one real root of x^(p-1) = ratio
            return [torch.sign(ratio) * ratio.abs().pow(1 / (p - 1))]
        if self.integer:  # p - 1 even: roots +-ratio^(1/(p-1)) when ratio >= 0
            root = torch.where(ratio >= 0, ratio.clamp(min=0).pow(1 / (p - 1)), torch.nan)
            return [root, -root]
        return [torch.where(ratio > 0, ratio.clamp(min=1e-300).pow(1 / (p - 1)), torch.nan)]

    def curvature(self, lower, upper):
        p = self.exponent
        if self.integer and int(p) % 2 == 0:
            return torch.full_like(lower, CONVEX)
        if self.integer:  # odd: concave below 0, convex above
            return torch.where(lower >= 0, CONVEX, torch.where(upper <= 0, CONCAVE, MIXED)).to(lower.dtype)
        return torch.full_like(lower, CONVEX if (p > 1 or p < 0) else CONCAVE)

    def in_domain(self, lower, upper):
        if self.integer and self.exponent >= 0:
            return torch.ones_like(lower, dtype=torch.bool)
        if self.integer:
            return (lower > 0) | (upper < 0)
        return lower > 0 if self.exponent < 0 else lower >= 0


class Periodic(Smooth):
    """sin(x + phase): intervals of width 2*pi or more get the constant lines -1 and 1."""

    def __init__(self, phase: float) -> None:
        super().__init__()
        self.phase = phase

    def f(self, x):
        return torch.sin(x + self.phase)

    def derivative(self, x):
        return torch.cos(x + self.phase)

    def critical_points(self, slope, lower, upper):
        # cos(x + phase) = slope  ->  x = +-acos(slope) - phase + 2 pi k
        base = torch.acos(slope.clamp(-1, 1))
        base = torch.where(slope.abs() <= 1, base, torch.nan)
        k0 = torch.floor((lower + self.phase) / (2 * math.pi))
        points = []
        for k in (-1, 0, 1, 2):
            shift = 2 * math.pi * (k0 + k) - self.phase
            points += [base + shift, -base + shift]
        return points

    def curvature(self, lower, upper):
        return torch.full_like(lower, MIXED)

    def ibp(self, x: Interval) -> Interval:
        wide = (x.upper - x.lower) >= 2 * math.pi
        bounds = super().ibp(Interval(torch.where(wide, 0.0, x.lower), torch.where(wide, 0.0, x.upper)))
        return Interval(torch.where(wide, -1.0, bounds.lower), torch.where(wide, 1.0, bounds.upper))

    def relax(self, x: Interval) -> LinearRelaxation:
        wide = (x.upper - x.lower) >= 2 * math.pi
        narrow = super().relax(Interval(torch.where(wide, 0.0, x.lower), torch.where(wide, 0.0, x.upper)))
        zero = torch.zeros_like(x.lower)
        return LinearRelaxation(
            torch.where(wide, zero, narrow.lower_slope), torch.where(wide, -1.0, narrow.lower_intercept),
            torch.where(wide, zero, narrow.upper_slope), torch.where(wide, 1.0, narrow.upper_intercept),
        )


_FUNCTIONS = {"exp": Exp, "log": Log, "sin": lambda: Periodic(0.0), "cos": lambda: Periodic(math.pi / 2)}


def function(builder, name: str, x):
    if name not in _FUNCTIONS:
        raise Unsupported(f"function '{name}'")
    return builder.add(_FUNCTIONS[name](), [x])


def reciprocal(builder, x):
    return builder.add(Reciprocal(), [x])


@register(OnnxReciprocal, "Reciprocal")
def reciprocal_factory(builder, module, args):
    return reciprocal(builder, args[0])


@register(OnnxSqrt, "Sqrt")
def sqrt_factory(builder, module, args):
    return builder.add(Sqrt(), [args[0]])


@register(OnnxPow, "Pow")
def pow_factory(builder, module, args):
    base, exponent = args
    if builder.is_variable(exponent) or not builder.is_variable(base):
        raise Unsupported("Pow with a variable exponent")
    exponent = torch.as_tensor(exponent)
    if exponent.numel() != 1:
        raise Unsupported("Pow with a non-scalar exponent")
    value = float(exponent.reshape(()))
    if value == 1.0:
        return base
    return builder.add(Power(value), [base])
