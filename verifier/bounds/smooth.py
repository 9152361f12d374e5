"""Smooth univariate functions: Exp, Log, Sqrt, Reciprocal, Pow with a constant exponent, Sin, Cos.

One recipe serves them all. For bounds [l, u] the slope of each line is chosen by the curvature
(chord on the side where f bends towards it, tangent at the middle on the other; the chord slope
for both lines where f changes curvature), and the intercept is the exact extremum of f(x) - a x
on [l, u], found among the ends and the listed critical points (f'(x) = a). IBP is the same
extremum with a = 0. Outside a function's domain the bounds are infinite (sound, vacuous). Sin
and Cos (Periodic) find that extremum in float64 relative to the interval's lower end, since
their critical points computed at the size of x are off by more than the bound may be.
"""

from __future__ import annotations

import math

import torch
from onnx2torch.node_converters.pow import OnnxSqrt
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
    """Sin or Cos, bounded in float64 in the coordinates of the interval's lower end.

    The extremum of g(x) = f(x) - a x on [l, u] lies at an end or where f'(x) = a. Near |x| = 1e6
    a float32 (1e15 a float64) peak position 2 pi k + pi/2 is off by several ulps, which costs up
    to 1e-3 (float32) of the maximum; Cos as sin(x + pi/2) rounds x itself. So nothing here is
    computed at the size of x: the phase of l, theta = atan2(sin l, cos l), is l mod 2 pi to
    within 3e-16 at any |l| (torch's float64 sin and cos reduce their argument exactly), and a
    point of the interval is l + t with 0 <= t <= u - l < 2 pi, where f(l + t) = f(theta + t).

    The critical points are t = +-acos(a) - shift - theta + 2 pi j (shift pi/2 for Cos; two
    values of j for each sign), off by at most DELTA. A candidate within DELTA of [0, u - l]
    counts (an end that close to a peak counts as holding it), evaluated at the nearest t of that
    range: as g'(t*) = 0 and |g''| = |f| <= 1, that value misses g(t*) by at most DELTA^2 / 2,
    plus DELTA for the phase error of f(theta + t) itself. The ends are f(l) and f(u) from
    float64 sin/cos (1 ulp). Every bound is widened by those, by the float64 roundings of the
    a x terms, and by OP_ERROR for the runtime's own sin/cos in the model's dtype, then rounded
    outwards to the tensors' dtype.
    """

    # its bounds and lines already hold onnxruntime's own sin and cos (OP_ERROR): no further allowance
    exact = True

    # Position (and phase) error of the critical points above, far above its ~1e-14 worst case
    # (atan2 of 1-ulp sin/cos, acos, pi and 2 pi j in float64, sums of terms below 4 pi).
    DELTA = 1e-13
    # The runtime's sin/cos error, absolute, in units of the model dtype's eps: onnxruntime
    # errs by up to 0.85 eps in float32 and 1 eps in float64 (measured up to |x| = 3e38 and
    # 1e300; tests/test_periodic.py checks it).
    OP_ERROR = 4.0

    def __init__(self, cosine: bool, model_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cosine = cosine
        # a plain attribute, so that the float64 re-check of a float32 model keeps the float32
        # error of the operator it bounds (Module.double() converts only tensors)
        self.model_dtype = model_dtype

    def f(self, x):
        return torch.cos(x) if self.cosine else torch.sin(x)

    def derivative(self, x):
        return -torch.sin(x) if self.cosine else torch.cos(x)

    def curvature(self, lower, upper):
        return torch.full_like(lower, MIXED)

    def alpha_project(self, alpha: list[Tensor], lower: Tensor, upper: Tensor) -> list[Tensor]:
        return [a.clamp(-1, 1) for a in alpha]  # f' lies in [-1, 1]

    @staticmethod
    def _wide(lower: Tensor, upper: Tensor) -> Tensor:
        """Intervals that hold a whole period, or that are not finite (NaN included)."""
        return ~((upper.double() - lower.double()) < 2 * math.pi)

    def _reduced(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, ...]:
        """The float64 ends, the width, the phase of the lower end and f at both ends."""
        low_end, high_end = lower.double(), upper.double()
        theta = torch.atan2(torch.sin(low_end), torch.cos(low_end))
        return low_end, high_end, high_end - low_end, theta, self.f(low_end), self.f(high_end)

    def _extremes(self, slope: Tensor, reduced: tuple[Tensor, ...], dtype: torch.dtype,
                  sides: tuple[int, ...] = (-1, 1)) -> list[Tensor]:
        """Bounds of f(x) - slope * x on the narrow, finite intervals of `reduced`, in `dtype`, for
        the runtime's f: the least value for side -1, the greatest for 1."""
        low_end, high_end, width, theta, f_low, f_high = reduced
        a = slope.double()
        ends = [f_low - a * low_end, f_high - a * high_end]
        valid = a.abs() < 1  # otherwise g is monotone: the ends hold its extremes
        base = torch.acos(torch.where(valid, a, 0.0))  # acos' derivative is infinite at +-1
        shift = math.pi / 2 if self.cosine else 0.0
        critical = []
        for sign in (1.0, -1.0):
            first = sign * base - shift - theta
            first = first - 2 * math.pi * torch.floor((first + self.DELTA) / (2 * math.pi))  # in [-DELTA, 2 pi)
            for t in (first, first + 2 * math.pi):  # the interval is narrower than 2 pi
                near = valid & (t >= -self.DELTA) & (t <= width + self.DELTA)
                t = torch.minimum(torch.maximum(t, torch.zeros_like(t)), width)
                critical.append((self.f(theta + t) - a * t - a * low_end, near))
        magnitude = 2 + a.abs() * (low_end.abs() + high_end.abs() + 8)
        slack = (8 * torch.finfo(torch.float64).eps * magnitude + self.DELTA + self.DELTA ** 2 / 2
                 + self.OP_ERROR * torch.finfo(self.model_dtype).eps)
        bounds = []
        for side in sides:
            excluded = torch.tensor(-side * math.inf, dtype=torch.float64, device=a.device)
            values = torch.stack(torch.broadcast_tensors(*ends, *(torch.where(ok, v, excluded) for v, ok in critical)))
            best = values.amax(0) if side > 0 else values.amin(0)
            bounds.append(_outwards(best + side * slack, dtype, side))
        return bounds

    def ibp(self, x: Interval) -> Interval:
        wide = self._wide(x.lower, x.upper)
        zero = torch.zeros_like(x.lower)
        reduced = self._reduced(torch.where(wide, zero, x.lower), torch.where(wide, zero, x.upper))
        low, high = self._extremes(zero, reduced, x.lower.dtype)
        # onnxruntime's float32 and float64 sin and cos never leave [-1, 1] (tests/test_periodic.py)
        return Interval(torch.where(wide, -1.0, low).clamp(-1, 1), torch.where(wide, 1.0, high).clamp(-1, 1))

    def relax(self, lower: Tensor, upper: Tensor, alpha: list[Tensor] | None = None) -> LinearRelaxation:
        wide = self._wide(lower, upper)
        zero = torch.zeros_like(lower)
        lower, upper = torch.where(wide, zero, lower), torch.where(wide, zero, upper)
        reduced = self._reduced(lower, upper)
        if alpha is None:  # MIXED curvature: both lines take the chord's slope
            lower_slope = upper_slope = self.slopes(lower, upper)[0]
            low, high = self._extremes(lower_slope, reduced, lower.dtype)
        else:
            lower_slope, upper_slope = alpha
            (low,) = self._extremes(lower_slope, reduced, lower.dtype, (-1,))
            (high,) = self._extremes(upper_slope, reduced, lower.dtype, (1,))
        return LinearRelaxation(torch.where(wide, zero, lower_slope), torch.where(wide, -1.0, low),
                                torch.where(wide, zero, upper_slope), torch.where(wide, 1.0, high))


def _outwards(value: Tensor, dtype: torch.dtype, direction: int) -> Tensor:
    """`value` (float64) in `dtype`, rounded down (direction -1) or up (1); gradients pass."""
    cast = value.to(dtype)
    if dtype == torch.float64:
        return cast
    with torch.no_grad():
        short = cast.double() > value if direction < 0 else cast.double() < value
        step = torch.nextafter(cast, torch.full_like(cast, direction * torch.inf)) - cast
    return cast + torch.where(short, step, torch.zeros_like(step))


_FUNCTIONS = {
    "exp": lambda builder: Exp(),
    "log": lambda builder: Log(),
    "sin": lambda builder: Periodic(False, builder.exec_dtype),
    "cos": lambda builder: Periodic(True, builder.exec_dtype),
}


def function(builder, name: str, x):
    if name not in _FUNCTIONS:
        raise Unsupported(f"function '{name}'")
    return builder.add(_FUNCTIONS[name](builder), [x])


@register(torch.exp)
@register(torch.log)
@register(torch.sin)
@register(torch.cos)
@register(torch.Tensor.exp)
@register(torch.Tensor.log)
@register(torch.Tensor.sin)
@register(torch.Tensor.cos)
def function_call_factory(builder, torch_function, args):
    return function(builder, torch_function.__name__, args[0])


@register(torch.sqrt)
@register(torch.Tensor.sqrt)
def sqrt_function_factory(builder, function, args):
    return builder.add(Sqrt(), [args[0]])


def reciprocal(builder, x):
    return builder.add(Reciprocal(), [x])


@register(OnnxReciprocal, "Reciprocal")
def reciprocal_factory(builder, module, args):
    return reciprocal(builder, args[0])


@register(OnnxSqrt, "Sqrt")
def sqrt_factory(builder, module, args):
    return builder.add(Sqrt(), [args[0]])

