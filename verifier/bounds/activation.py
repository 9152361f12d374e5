"""Activations: ReLU (and Clip, LeakyRelu, PRelu, Abs, Max, Min, HardSigmoid and Elu built from
it), Sigmoid, Tanh, Sign.

ReLU uses the chord above and the adaptive lower line (slope 1 if u >= -l, else 0). Sigmoid and
Tanh pick each line's slope by the tangent/chord rules of CROWN and then take the intercept as the
exact extremum of f(x) - a x on [l, u], so the lines stay sound whatever slope was picked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.activations import OnnxHardSigmoid, OnnxPReLU
from onnx2torch.node_converters.clip import OnnxClip
from onnx2torch.node_converters.functions import OnnxFunction
from onnx2torch.node_converters.min_max import OnnxMinMax
from torch import Tensor, nn

from verifier.bounds import smooth
from verifier.bounds.arith import WeightedSum, affine, binary
from verifier.bounds.core import Interval, Unsupported, register, rounding
from verifier.bounds.relaxation import Elementwise, LinearRelaxation, clamp_passing, extremum_intercepts

_BISECTION_STEPS = 24
# Inputs of sigmoid and tanh narrower than this are not split further: their lines are already
# within about width^2 / 10 of the function.
MIN_SPLIT_WIDTH = 1e-3


class ReLU(Elementwise):
    splittable = True
    tighter_input_helps = False
    exact = True

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def ibp(self, x: Interval) -> Interval:
        return Interval(torch.relu(x.lower), torch.relu(x.upper))

    def relevant(self, bounds: Interval) -> Tensor:
        return (bounds.lower < 0) & (bounds.upper > 0)

    def split_point(self, lower: Tensor, upper: Tensor) -> Tensor:
        return torch.zeros_like(lower)

    def can_split(self, lower: Tensor, upper: Tensor) -> Tensor:
        return (lower < 0) & (upper > 0)

    def split_score(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        # the intercept of the upper line (the chord) at 0: the chord's largest gap above relu; the
        # lower line is counted as exact (BaBSR)
        return -lower * upper / (upper - lower).clamp(min=1e-30), torch.zeros_like(lower)

    def relax(self, lower: Tensor, upper: Tensor, alpha: list[Tensor] | None = None) -> LinearRelaxation:
        active, inactive = lower >= 0, upper <= 0
        unstable = ~(active | inactive)
        chord = upper / (upper - lower).clamp(min=torch.finfo(lower.dtype).tiny)
        upper_slope = torch.where(active, 1.0, torch.where(inactive, 0.0, chord))
        upper_intercept = torch.where(unstable, -lower * upper_slope, 0.0)
        # the lower line through the origin is sound for any slope in [0, 1]
        # not Tensor.clamp: its gradient at 0 and 1 (where the slope starts) is 0 since torch 2.14
        free = clamp_passing(alpha[0], 0, 1) if alpha is not None else (upper >= -lower).to(lower.dtype)
        lower_slope = torch.where(active, 1.0, torch.where(unstable, free, 0.0))
        return LinearRelaxation(lower_slope, torch.zeros_like(lower_slope), upper_slope, upper_intercept)

    def alpha_init(self, lower: Tensor, upper: Tensor) -> list[Tensor]:
        return [(upper >= -lower).to(lower.dtype)]

    def alpha_project(self, alpha: list[Tensor], lower: Tensor, upper: Tensor) -> list[Tensor]:
        return [alpha[0].clamp(0, 1)]


class SShaped(Elementwise):
    """An increasing function, convex below 0 and concave above (sigmoid, tanh).

    Its lines' slopes are the free parameters: the intercepts are always the exact extremum of
    f(x) - a x on [l, u], so any slope gives sound lines. Branch and bound splits an input at 0
    (a convex and a concave piece) when 0 lies well inside its interval, else at the middle.
    """

    approximated = True
    splittable = True
    warm_start = False

    def split_point(self, lower: Tensor, upper: Tensor) -> Tensor:
        margin = 0.1 * (upper - lower)
        inside = (lower + margin < 0) & (upper - margin > 0)
        return torch.where(inside, 0.0, (lower + upper) / 2)

    def can_split(self, lower: Tensor, upper: Tensor) -> Tensor:
        return torch.isfinite(lower) & torch.isfinite(upper) & (upper - lower > MIN_SPLIT_WIDTH)

    def split_score(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        # each line's gap to f at the ends and the middle (a sampled estimate: it only ranks neurons)
        finite = torch.isfinite(lower) & torch.isfinite(upper)
        low, high = torch.where(finite, lower, 0.0), torch.where(finite, upper, 0.0)
        lines = self.relax(low, high)
        points = torch.stack([low, (low + high) / 2, high])
        values = self.f(points)
        above = (lines.upper_slope * points + lines.upper_intercept - values).amax(0).clamp(min=0)
        below = (values - lines.lower_slope * points - lines.lower_intercept).amax(0).clamp(min=0)
        return torch.where(finite, above, 0.0), torch.where(finite, below, 0.0)

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
        """The CROWN rule's slopes (lower line, upper line)."""
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

    def relax(self, lower: Tensor, upper: Tensor, alpha: list[Tensor] | None = None) -> LinearRelaxation:
        finite = torch.isfinite(lower) & torch.isfinite(upper)
        low_end = torch.where(finite, lower, 0.0)
        high_end = torch.where(finite, upper, 0.0)
        lower_slope, upper_slope = alpha if alpha is not None else self.slopes(low_end, high_end)
        low, _ = self.intercepts(lower_slope, low_end, high_end)
        _, high = self.intercepts(upper_slope, low_end, high_end)
        zero = torch.zeros_like(low)
        return LinearRelaxation(
            torch.where(finite, lower_slope, zero), torch.where(finite, low, self.f(lower)),
            torch.where(finite, upper_slope, zero), torch.where(finite, high, self.f(upper)),
        )

    def alpha_init(self, lower: Tensor, upper: Tensor) -> list[Tensor]:
        finite = torch.isfinite(lower) & torch.isfinite(upper)
        return list(self.slopes(torch.where(finite, lower, 0.0), torch.where(finite, upper, 0.0)))

    def alpha_project(self, alpha: list[Tensor], lower: Tensor, upper: Tensor) -> list[Tensor]:
        # slopes beyond f' on [l, u] only loosen the lines: keep them between f'(l), f'(u) and the peak
        finite = torch.isfinite(lower) & torch.isfinite(upper)
        low_end, high_end = torch.where(finite, lower, 0.0), torch.where(finite, upper, 0.0)
        least = torch.minimum(self.derivative(low_end), self.derivative(high_end))
        most = self.derivative(torch.clamp(torch.zeros_like(low_end), low_end, high_end))
        return [torch.maximum(torch.minimum(a, most), least) for a in alpha]

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
        # no critical point unless 0 < slope < 1/4; safe inputs keep gradients finite (alpha-CROWN)
        # s (1 - s) = a with s = (1 + r) / 2, r = sqrt(1 - 4a); logit(s) = 2 log(1 + r) - log(4a),
        # which stays finite (with finite gradient) for tiny a, where s rounds to 1.
        valid = (slope > 0) & (slope < 0.25)
        safe = torch.where(valid, slope, 0.125).clamp(min=torch.finfo(slope.dtype).tiny * 1e8)
        root = torch.sqrt(1 - 4 * safe)
        return torch.where(valid, 2 * torch.log1p(root) - torch.log(4 * safe), torch.nan)


class Tanh(SShaped):
    def f(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def derivative(self, x: Tensor) -> Tensor:
        return 1 - torch.tanh(x) ** 2

    def critical_point(self, slope: Tensor) -> Tensor:
        # 1 - t^2 = a with t = sqrt(1 - a); atanh(t) = log(1 + t) - log(a) / 2 stays finite for tiny a
        valid = (slope > 0) & (slope < 1)
        safe = torch.where(valid, slope, 0.5).clamp(min=torch.finfo(slope.dtype).tiny * 1e8)
        return torch.where(valid, torch.log1p(torch.sqrt(1 - safe)) - torch.log(safe) / 2, torch.nan)


class Sign(Elementwise):
    """ONNX Sign (-1, 0, 1); relaxed by constant lines."""

    exact = True

    def forward(self, x: Tensor) -> Tensor:
        return torch.sign(x)

    def ibp(self, x: Interval) -> Interval:
        return Interval(torch.sign(x.lower), torch.sign(x.upper))

    def relax(self, lower: Tensor, upper: Tensor, alpha: list[Tensor] | None = None) -> LinearRelaxation:
        zero = torch.zeros_like(lower)
        return LinearRelaxation(zero, torch.sign(lower), zero, torch.sign(upper))


@register(nn.ReLU, "Relu")
@register(torch.relu)
@register(F.relu)
@register(torch.Tensor.relu)
def relu_factory(builder, module, args):
    return builder.add(ReLU(), [args[0]])


@register(nn.Sigmoid, "Sigmoid")
@register(torch.sigmoid)
@register(F.sigmoid)
@register(torch.Tensor.sigmoid)
def sigmoid_factory(builder, module, args):
    return builder.add(Sigmoid(), [args[0]])


@register(nn.Tanh, "Tanh")
@register(torch.tanh)
@register(F.tanh)
@register(torch.Tensor.tanh)
def tanh_factory(builder, module, args):
    return builder.add(Tanh(), [args[0]])


@register(nn.LeakyReLU, "LeakyRelu")
def leaky_relu_factory(builder, module, args):
    return _leaky_relu(builder, args[0], float(module.negative_slope))


@register(F.leaky_relu)
def leaky_relu_function_factory(builder, function, args):
    return _leaky_relu(builder, args[0], float(args[1]) if len(args) > 1 else 0.01)


def _leaky_relu(builder, x, slope: float | Tensor):
    # leaky(x) = slope * x + (1 - slope) * relu(x): an identity for every slope (above 1 or below
    # 0 too: a negative weight on relu(x) is bounded like any other)
    rectified = builder.add(ReLU(), [x])
    if not isinstance(slope, Tensor):
        return builder.add(WeightedSum((slope, 1.0 - slope), [x.shape, x.shape]), [x, rectified])
    scaled, rest = affine(builder, x, scale=slope), affine(builder, rectified, scale=1 - slope)
    return builder.add(WeightedSum((1.0, 1.0), [scaled.shape, rest.shape]), [scaled, rest])


@register(OnnxPReLU, "PRelu")
def prelu_factory(builder, module, args):
    x, slope = args
    if builder.is_variable(slope):
        raise Unsupported("PRelu with a variable slope")
    slope = torch.as_tensor(slope).to(builder.dtype)
    if slope.numel() == 1:
        return _leaky_relu(builder, x, float(slope.reshape(())))
    return _leaky_relu(builder, x, slope)  # broadcast against x as numpy does (the ONNX rule)


@register(OnnxMinMax, "Max", "Min")
def min_max_factory(builder, module, args):
    """Variadic Max and Min, folded pairwise: max(a, b) = a + relu(b - a), min(a, b) = a - relu(a - b)."""
    largest = module._op_type == "Max"  # noqa: SLF001 - onnx2torch keeps the op type only there
    variables = [a for a in args if builder.is_variable(a)]
    constants = [torch.as_tensor(a).to(builder.dtype) for a in args if not builder.is_variable(a)]
    result = variables[0]
    if constants:  # the constants' own max (or min) first: exact, and one pair fewer
        folded = constants[0]
        for constant in constants[1:]:
            folded = torch.maximum(folded, constant) if largest else torch.minimum(folded, constant)
        variables = [*variables, folded]
    for other in variables[1:]:
        excess = binary(builder, "sub", other, result) if largest else binary(builder, "sub", result, other)
        result = binary(builder, "add" if largest else "sub", result, builder.add(ReLU(), [excess]))
    return result  # the sums broadcast their operands, so the shape is the operands' broadcast one


def absolute(builder, x):
    # |x| = 2 relu(x) - x: one ReLU, whose chord is that of |x|
    rectified = builder.add(ReLU(), [x])
    return builder.add(WeightedSum((2.0, -1.0), [x.shape, x.shape]), [rectified, x])


@register(OnnxHardSigmoid, "HardSigmoid")
def hard_sigmoid_factory(builder, module, args):
    scaled = affine(builder, args[0], scale=torch.tensor(float(module.alpha)), shift=torch.tensor(float(module.beta)))
    return _clip(builder, scaled, 0.0, 1.0)


@register(nn.ELU, "Elu")
def elu_factory(builder, module, args):
    # elu(x) = relu(x) + alpha (exp(min(x, 0)) - 1), and min(x, 0) = x - relu(x)
    x = args[0]
    alpha = float(module.alpha)
    rectified = builder.add(ReLU(), [x])
    negative = builder.add(WeightedSum((1.0, -1.0), [x.shape, x.shape]), [x, rectified])
    exponential = smooth.function(builder, "exp", negative)
    total = builder.add(WeightedSum((1.0, alpha), [x.shape, x.shape]), [rectified, exponential])
    return affine(builder, total, shift=torch.tensor(-alpha))


def _clip(builder, x, low: float | None, high: float | None):
    # clip(x, a, b) = a + relu(x - a) - relu(x - b); each side is optional.
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
    # an absent bound, or an infinite one (Clip with min = -inf), clips nothing on that side
    low = None if low is None or float(low) == -float("inf") else float(low)
    high = None if high is None or float(high) == float("inf") else float(high)
    return _clip(builder, args[0], low, high)


@register(torch.clamp)
@register(torch.clip)
@register(torch.Tensor.clamp)
@register(torch.Tensor.clip)
@register(F.hardtanh)
@register(F.relu6)
def clamp_function_factory(builder, function, args):
    """clamp(x, min, max), hardtanh(x, min_val, max_val) and relu6(x), bounds given as numbers."""
    if any(builder.is_variable(a) for a in args[1:]):
        raise Unsupported("a clamp whose bounds are variables")
    if function is F.relu6:
        low, high = 0.0, 6.0
    else:
        defaults = (-1.0, 1.0) if function is F.hardtanh else (None, None)
        given = list(args[1:3]) + list(defaults[len(args) - 1:])
        if any(v is not None and torch.as_tensor(v).numel() != 1 for v in given[:2]):
            raise Unsupported("a clamp with bounds per element")
        low, high = (None if v is None else float(v) for v in given[:2])
    return _clip(builder, args[0], low, high)


@register(OnnxFunction, "Tanh", "Sign", "Sin", "Cos", "Exp", "Log", "Abs")
def function_factory(builder, module, args):
    name = module.function.__name__
    if name == "abs":
        return absolute(builder, args[0])
    if name == "tanh":
        return builder.add(Tanh(), [args[0]])
    if name == "sign":
        return builder.add(Sign(), [args[0]])
    return smooth.function(builder, name, args[0])
