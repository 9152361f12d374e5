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

    approximated = True

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

    def _safe(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ok = self.in_domain(lower, upper) & torch.isfinite(lower) & torch.isfinite(upper)
        default = self.default_point(lower)
        return ok, torch.where(ok, lower, default), torch.where(ok, upper, default)

    def default_point(self, like: Tensor) -> Tensor:
        return torch.ones_like(like)

    def ibp(self, x: Interval) -> Interval:
        ok, lower, upper = self._safe(x.lower, x.upper)
        zero = torch.zeros_like(lower)
        low, high = extremum_intercepts(self.f, zero, lower, upper, self.critical_points(zero, lower, upper))
        return Interval(torch.where(ok, low, -torch.inf), torch.where(ok, high, torch.inf))

    def slopes(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """The rule's slopes (lower line, upper line): tangent or chord by curvature."""
        width = upper - lower
        degenerate = width <= 1e-12 * (1 + upper.abs())
        middle = (lower + upper) / 2
        chord = (self.f(upper) - self.f(lower)) / torch.where(degenerate, 1.0, width)
        chord = torch.where(degenerate, self.derivative(middle), chord)
        tangent = self.derivative(middle)
        bend = self.curvature(lower, upper)
        return torch.where(bend == CONVEX, tangent, chord), torch.where(bend == CONCAVE, tangent, chord)

    def relax(self, lower: Tensor, upper: Tensor, alpha: list[Tensor] | None = None) -> LinearRelaxation:
        ok, lower, upper = self._safe(lower, upper)
        lower_slope, upper_slope = alpha if alpha is not None else self.slopes(lower, upper)
        low, _ = extremum_intercepts(self.f, lower_slope, lower, upper,
                                     self.critical_points(lower_slope, lower, upper))
        _, high = extremum_intercepts(self.f, upper_slope, lower, upper,
                                      self.critical_points(upper_slope, lower, upper))
        zero = torch.zeros_like(lower)
        return LinearRelaxation(torch.where(ok, lower_slope, zero), torch.where(ok, low, -torch.inf),
                                torch.where(ok, upper_slope, zero), torch.where(ok, high, torch.inf))

    def alpha_init(self, lower: Tensor, upper: Tensor) -> list[Tensor]:
        _, lower, upper = self._safe(lower, upper)
        return list(self.slopes(lower, upper))

    def alpha_project(self, alpha: list[Tensor], lower: Tensor, upper: Tensor) -> list[Tensor]:
        # any finite slope gives sound lines (exact intercepts); keep them between f' at the ends
        _, lower, upper = self._safe(lower, upper)
        ends = torch.stack([self.derivative(lower), self.derivative(upper)])
        least, most = ends.amin(0), ends.amax(0)
        return [torch.maximum(torch.minimum(a, most), least) for a in alpha]


class Exp(Smooth):
    def f(self, x):
        return torch.exp(x)

    def derivative(self, x):
        return torch.exp(x)

    def critical_points(self, slope, lower, upper):
        valid = slope > 0
        return [torch.where(valid, torch.log(torch.where(valid, slope, 1.0)), torch.nan)]

    def curvature(self, lower, upper):
        return torch.full_like(lower, CONVEX)


class Log(Smooth):
    def f(self, x):
        return torch.log(x)

    def derivative(self, x):
        return 1 / x

    def critical_points(self, slope, lower, upper):
        valid = slope > 0
        return [torch.where(valid, 1 / torch.where(valid, slope, 1.0), torch.nan)]

    def curvature(self, lower, upper):
        return torch.full_like(lower, CONCAVE)

    def in_domain(self, lower, upper):
        return lower > 0


class Sqrt(Smooth):
    approximated = False  # IEEE square roots are correctly rounded

    def f(self, x):
        return torch.sqrt(x)

    def derivative(self, x):
        return 0.5 / torch.sqrt(x)

    def critical_points(self, slope, lower, upper):
        valid = slope > 0
        safe = torch.where(valid, slope, 1.0)
        return [torch.where(valid, 0.25 / (safe * safe), torch.nan)]

    def curvature(self, lower, upper):
        return torch.full_like(lower, CONCAVE)

    def in_domain(self, lower, upper):
        return lower >= 0

    def default_point(self, like):
        return torch.ones_like(like)


class Reciprocal(Smooth):
    """1/x on intervals that exclude 0: convex for x > 0, concave for x < 0."""

    approximated = False  # a correctly rounded division

    def f(self, x):
        return 1 / x

    def derivative(self, x):
        return -1 / (x * x)

    def critical_points(self, slope, lower, upper):
        valid = slope < 0
        root = torch.where(valid, torch.sqrt(-1 / torch.where(valid, slope, -1.0)), torch.nan)
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
        nonzero = ratio != 0
        safe = torch.where(nonzero, ratio, 1.0)  # pow of 0 has an infinite derivative
        if self.integer and int(p) % 2 == 0:  # p - 1 odd: one real root of x^(p-1) = ratio
            return [torch.where(nonzero, torch.sign(safe) * safe.abs().pow(1 / (p - 1)), 0.0)]
        positive = ratio > 0
        root = torch.where(positive, torch.where(positive, ratio, 1.0).pow(1 / (p - 1)), torch.nan)
        if self.integer:  # p - 1 even: roots +-ratio^(1/(p-1)) when ratio >= 0
            root = torch.where(nonzero, root, 0.0)
            return [root, -root]
        return [root]

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
        valid = slope.abs() < 1  # acos has infinite derivatives at +-1: keep its input inside
        base = torch.where(valid, torch.acos(torch.where(valid, slope, 0.0)), torch.where(slope >= 1, 0.0, torch.pi))
        k0 = torch.floor((lower + self.phase) / (2 * math.pi))
        points = []
        for k in (-1, 0, 1, 2):
            shift = 2 * math.pi * (k0 + k) - self.phase
            points += [base + shift, -base + shift]
        return points

    def curvature(self, lower, upper):
        return torch.full_like(lower, MIXED)

    def alpha_project(self, alpha: list[Tensor], lower: Tensor, upper: Tensor) -> list[Tensor]:
        return [a.clamp(-1, 1) for a in alpha]  # f' = cos lies in [-1, 1]

    def ibp(self, x: Interval) -> Interval:
        wide = (x.upper - x.lower) >= 2 * math.pi
        bounds = super().ibp(Interval(torch.where(wide, 0.0, x.lower), torch.where(wide, 0.0, x.upper)))
        return Interval(torch.where(wide, -1.0, bounds.lower), torch.where(wide, 1.0, bounds.upper))

    def relax(self, lower: Tensor, upper: Tensor, alpha: list[Tensor] | None = None) -> LinearRelaxation:
        wide = (upper - lower) >= 2 * math.pi
        narrow = super().relax(torch.where(wide, 0.0, lower), torch.where(wide, 0.0, upper), alpha)
        zero = torch.zeros_like(lower)
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
