"""Activations: ReLU (and Clip/LeakyReLU built from it), Sigmoid, Tanh, Sign.

ReLU uses the chord above and the adaptive lower line (slope 1 if u >= -l, else 0). Sigmoid and
Tanh pick each line's slope by the tangent/chord rules of CROWN and then take the intercept as the
exact extremum of f(x) - a x on [l, u], so the lines stay sound whatever slope was picked.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.clip import OnnxClip
from onnx2torch.node_converters.functions import OnnxFunction
from torch import Tensor, nn

from verifier.bounds.arith import affine
from verifier.bounds.core import Interval, Unsupported, register, rounding
from verifier.bounds.relaxation import Elementwise, LinearRelaxation, extremum_intercepts

_BISECTION_STEPS = 24


class ReLU(Elementwise):
    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def ibp(self, x: Interval) -> Interval:
        return Interval(torch.relu(x.lower), torch.relu(x.upper))

    def relevant(self, bounds: Interval) -> Tensor:
        return (bounds.lower < 0) & (bounds.upper > 0)

    def relax(self, x: Interval) -> LinearRelaxation:
        lower, upper = x.lower, x.upper
        active, inactive = lower >= 0, upper <= 0
        unstable = ~(active | inactive)
        chord = upper / (upper - lower).clamp(min=torch.finfo(lower.dtype).tiny)
        upper_slope = torch.where(active, 1.0, torch.where(inactive, 0.0, chord))
        upper_intercept = torch.where(unstable, -lower * upper_slope, 0.0)
        lower_slope = torch.where(active | (unstable & (upper >= -lower)), 1.0, 0.0).to(lower.dtype)
        return LinearRelaxation(lower_slope, torch.zeros_like(lower), upper_slope, upper_intercept)


class SShaped(Elementwise):
    """An increasing function, convex below 0 and concave above (sigmoid, tanh)."""

    def f(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def critical_point(self, slope: Tensor) -> Tensor:
        """The x >= 0 with f'(x) = slope (NaN where none)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.f(x)

    def ibp(self, x: Interval) -> Interval:
        low, high = self.f(x.lower), self.f(x.upper)
        error = rounding(low.dtype, 2) * torch.maximum(low.abs(), high.abs())  # a few ulp of libm
        return Interval(low - error, high + error)

    def _tangent_through(self, anchor: Tensor, start: Tensor, stop: Tensor) -> Tensor:
        """Bisect for the tangent point t in [start, stop] whose tangent passes through (anchor, f(anchor))."""
        target = self.f(anchor)
        low, high = start, stop
        for _ in range(_BISECTION_STEPS):
            mid = (low + high) / 2
            gap = self.f(mid) + self.derivative(mid) * (anchor - mid) - target
            # gap grows with t on both branches, and the root is where gap changes sign.
            above = gap > 0
            high = torch.where(above, mid, high)
            low = torch.where(above, low, mid)
        return high

    def slopes(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        width = upper - lower
        degenerate = width <= 1e-12 * (1 + upper.abs())
        middle = (lower + upper) / 2
        chord = (self.f(upper) - self.f(lower)) / torch.where(degenerate, 1.0, width)
        tangent_mid = self.derivative(middle)
        zero = torch.zeros_like(lower)
        # Upper line: chord on the convex side; tangent at the middle on the concave side; mixed:
        # the tangent that passes through (l, f(l)) if its point lies below u, else the chord.
        upper_point = self._tangent_through(lower, zero, upper.clamp(min=0))
        mixed_upper_ok = self.f(upper) + self.derivative(upper) * (lower - upper) > self.f(lower)
        upper_mixed = torch.where(mixed_upper_ok, self.derivative(upper_point), chord)
        upper_slope = torch.where(upper <= 0, chord, torch.where(lower >= 0, tangent_mid, upper_mixed))
        lower_point = self._tangent_through(upper, lower.clamp(max=0), zero)
        mixed_lower_ok = self.f(lower) + self.derivative(lower) * (upper - lower) < self.f(upper)
        lower_mixed = torch.where(mixed_lower_ok, self.derivative(lower_point), chord)
        lower_slope = torch.where(lower >= 0, chord, torch.where(upper <= 0, tangent_mid, lower_mixed))
        return (torch.where(degenerate, tangent_mid, lower_slope), torch.where(degenerate, tangent_mid, upper_slope))

    def relax(self, x: Interval) -> LinearRelaxation:
        finite = torch.isfinite(x.lower) & torch.isfinite(x.upper)
        lower = torch.where(finite, x.lower, 0.0)
        upper = torch.where(finite, x.upper, 0.0)
        lower_slope, upper_slope = self.slopes(lower, upper)
        low, _ = self.intercepts(lower_slope, lower, upper)
        _, high = self.intercepts(upper_slope, lower, upper)
        zero = torch.zeros_like(lower)
        return LinearRelaxation(
            torch.where(finite, lower_slope, zero), torch.where(finite, low, self.f(x.lower)),
            torch.where(finite, upper_slope, zero), torch.where(finite, high, self.f(x.upper)),
        )

    def intercepts(self, slope: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        point = self.critical_point(slope)
        return extremum_intercepts(self.f, slope, lower, upper, [point, -point])


class Sigmoid(SShaped):
    def f(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def derivative(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)

    def critical_point(self, slope: Tensor) -> Tensor:
        root = torch.sqrt(1 - 4 * slope)  # NaN when slope > 1/4: no critical point
        s = (1 + root) / 2
        return torch.where(slope > 0, torch.log(s) - torch.log1p(-s), torch.nan)


class Tanh(SShaped):
    def f(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def derivative(self, x: Tensor) -> Tensor:
        return 1 - torch.tanh(x) ** 2

    def critical_point(self, slope: Tensor) -> Tensor:
        return torch.where(slope > 0, torch.atanh(torch.sqrt(1 - slope)), torch.nan)


class Sign(Elementwise):
    """ONNX Sign (-1, 0, 1); relaxed by constant lines."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sign(x)

    def ibp(self, x: Interval) -> Interval:
        return Interval(torch.sign(x.lower), torch.sign(x.upper))

    def relax(self, x: Interval) -> LinearRelaxation:
        zero = torch.zeros_like(x.lower)
        return LinearRelaxation(zero, torch.sign(x.lower), zero, torch.sign(x.upper))


@register(nn.ReLU, "Relu")
def relu_factory(builder, module, args):
    return builder.add(ReLU(), [args[0]])


@register(nn.Sigmoid, "Sigmoid")
def sigmoid_factory(builder, module, args):
    return builder.add(Sigmoid(), [args[0]])


@register(nn.Tanh, "Tanh")
def tanh_factory(builder, module, args):
    return builder.add(Tanh(), [args[0]])


@register(nn.LeakyReLU, "LeakyRelu")
def leaky_relu_factory(builder, module, args):
    # leaky(x) = slope * x + (1 - slope) * relu(x), exact for slope < 1.
    from verifier.bounds.arith import WeightedSum

    x = args[0]
    slope = float(module.negative_slope)
    if not 0 <= slope < 1:
        raise Unsupported(f"LeakyRelu with slope {slope}")
    rectified = builder.add(ReLU(), [x])
    return builder.add(WeightedSum((slope, 1.0 - slope), [x.shape, x.shape]), [x, rectified])


def _clip(builder, x, low: float | None, high: float | None):
    # clip(x, a, b) = a + relu(x - a) - relu(x - b); each side is optional.
    from verifier.bounds.arith import WeightedSum

    out = x
    if low is not None:
        shifted = affine(builder, out, shift=torch.tensor(-low))
        out = affine(builder, builder.add(ReLU(), [shifted]), shift=torch.tensor(low))
    if high is not None:
        shifted = affine(builder, out, shift=torch.tensor(-high))
        excess = builder.add(ReLU(), [shifted])
        out = builder.add(WeightedSum((1.0, -1.0), [out.shape, excess.shape]), [out, excess])
    return out


@register(OnnxClip, "Clip")
@register(nn.ReLU6, "Clip")
@register(nn.Hardtanh, "Clip")
def clip_factory(builder, module, args):
    if isinstance(module, nn.Hardtanh):
        low, high = module.min_val, module.max_val
    else:
        low, high = module.min_val, module.max_val
    low = None if low is None else float(low)
    high = None if high is None else float(high)
    return _clip(builder, args[0], low, high)


@register(OnnxFunction, "Tanh", "Sign", "Sin", "Cos", "Exp", "Log")
def function_factory(builder, module, args):
    name = module.function.__name__
    if name == "tanh":
        return builder.add(Tanh(), [args[0]])
    if name == "sign":
        return builder.add(Sign(), [args[0]])
    from verifier.bounds import smooth

    return smooth.function(builder, name, args[0])
