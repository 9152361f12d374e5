"""Element-wise arithmetic: Add/Sub/Mul/Div/Neg with constants, Add/Sub of two variables.

Products and quotients of two variables are relaxed in `bilinear.py`; this file dispatches to it.
"""

from __future__ import annotations

import operator

import torch
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from onnx2torch.node_converters.mean import OnnxMean
from onnx2torch.node_converters.neg import OnnxNeg
from onnx2torch.node_converters.pow import OnnxPow
from onnx2torch.node_converters.sum import OnnxSum
from onnx2torch.utils.common import old_style_broadcast
from torch import Tensor

from verifier.bounds import bilinear
from verifier.bounds.core import (
    Backward,
    Interval,
    Rule,
    Unsupported,
    broadcast_shape,
    register,
    row_sum,
    sum_to_shape,
)
from verifier.bounds.patches import Patches
from verifier.bounds.shape import align_rank
from verifier.bounds.smooth import Exp, Power, reciprocal


class Affine(Rule):
    """`y = x * scale + shift`, with constants broadcast against the per-sample shape of x."""

    sums_products = True
    rounding_terms = 2

    def __init__(self, in_shape: tuple[int, ...], scale: Tensor | None, shift: Tensor | None) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def on_integers(self) -> str:
        whole = all(t is None or bool((t == torch.round(t)).all()) for t in (self.scale, self.shift))
        return "wraps" if whole else "no"

    def forward(self, x: Tensor) -> Tensor:
        if self.scale is not None:
            x = x * self.scale
        if self.shift is not None:
            x = x + self.shift
        return x

    def forward_forms(self, x, bounds: list[Interval]):
        scale = self.scale if self.scale is not None else torch.ones((), dtype=x.lower.dtype, device=x.lower.device)
        positive, negative = scale.clamp(min=0), scale.clamp(max=0)
        lower_bias = x.lower_bias * positive + x.upper_bias * negative
        upper_bias = x.upper_bias * positive + x.lower_bias * negative
        if self.shift is not None:
            lower_bias, upper_bias = lower_bias + self.shift, upper_bias + self.shift
        shape = (*x.lower.shape[:2], *lower_bias.shape[1:])
        return type(x)(torch.broadcast_to(x.lower * positive + x.upper * negative, shape), lower_bias,
                       torch.broadcast_to(x.upper * positive + x.lower * negative, shape), upper_bias)

    def ibp(self, x: Interval) -> Interval:
        center, radius = self.forward(x.center), x.radius
        magnitude = x.center.abs() + x.radius
        if self.scale is not None:
            radius = radius * self.scale.abs()
            magnitude = magnitude * self.scale.abs()
        if self.shift is not None:
            magnitude = magnitude + self.shift.abs()
        return Interval.from_center(center, radius.expand_as(center), magnitude.expand_as(center), 2)

    @property
    def accepts_patches(self) -> bool:
        return len(self.in_shape) in (3, 4) and self.in_shape[:-3] in ((), (1,)) and all(
            t is None or t.dim() <= len(self.in_shape) and broadcast_shape(t.shape, self.in_shape)
            == self.in_shape for t in (self.scale, self.shift))

    def backward(self, coeffs: Tensor | Patches, x: Interval | None = None) -> Backward:
        if isinstance(coeffs, Patches):
            bias = 0.0 if self.shift is None else coeffs.inner(self.shift.expand(self.in_shape).unsqueeze(0))
            if self.scale is not None:
                coeffs = coeffs.with_values(coeffs.values * coeffs.windows(self.scale.expand(self.in_shape)
                                                                           .unsqueeze(0)))
            return Backward([coeffs], bias)
        bias = 0.0
        if self.shift is not None:
            bias = row_sum(coeffs * self.shift)
        if self.scale is not None:
            coeffs = coeffs * self.scale
        return Backward([sum_to_shape(coeffs, self.in_shape)], bias)


class WeightedSum(Rule):
    """`y = sum_i weights[i] * x_i` over variables of broadcast-compatible per-sample shapes."""

    sums_products = True

    def __init__(self, weights: tuple[float, ...], in_shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.weights = weights
        self.in_shapes = in_shapes

    @property
    def rounding_terms(self) -> int:
        return 2 * len(self.weights)

    def on_integers(self) -> str:
        return "wraps" if all(float(w).is_integer() for w in self.weights) else "no"

    def forward(self, *xs: Tensor) -> Tensor:
        total = xs[0] * self.weights[0]
        for weight, x in zip(self.weights[1:], xs[1:]):
            total = total + weight * x
        return total

    def forward_forms(self, *xs, bounds: list[Interval]):
        sides = {"lower": 0.0, "lower_bias": 0.0, "upper": 0.0, "upper_bias": 0.0}
        for weight, x in zip(self.weights, xs):
            low, high = ("lower", "upper") if weight >= 0 else ("upper", "lower")
            sides["lower"] = sides["lower"] + weight * getattr(x, low)
            sides["lower_bias"] = sides["lower_bias"] + weight * getattr(x, low + "_bias")
            sides["upper"] = sides["upper"] + weight * getattr(x, high)
            sides["upper_bias"] = sides["upper_bias"] + weight * getattr(x, high + "_bias")
        return type(xs[0])(**sides)

    def ibp(self, *xs: Interval) -> Interval:
        center = radius = magnitude = 0.0
        for weight, x in zip(self.weights, xs):
            center = center + weight * x.center
            radius = radius + abs(weight) * x.radius
            magnitude = magnitude + abs(weight) * (x.center.abs() + x.radius)
        return Interval.from_center(center, radius, magnitude, 2 * len(self.weights))

    @property
    def accepts_patches(self) -> bool:
        first = self.in_shapes[0]
        return len(first) in (3, 4) and first[:-3] in ((), (1,)) and all(s == first for s in self.in_shapes)

    def backward(self, coeffs: Tensor | Patches, *xs: Interval | None) -> Backward:
        if isinstance(coeffs, Patches):
            return Backward([coeffs.scaled(w) for w in self.weights])
        return Backward([sum_to_shape(coeffs * w, shape) for w, shape in zip(self.weights, self.in_shapes)])


def affine(builder, x, scale: Tensor | None = None, shift: Tensor | None = None):
    """Add `x * scale + shift` (constants in the model's per-sample layout) to the graph."""
    rank = max([len(x.shape)] + [t.dim() for t in (scale, shift) if t is not None])
    x = align_rank(builder, x, rank)
    cast = [None if t is None else t.to(builder.dtype) for t in (scale, shift)]
    return builder.add(Affine(x.shape, *cast), [x])


def _as_tensor(builder, value) -> Tensor:
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.to(builder.dtype)
    return tensor


@register(OnnxBinaryMathOperation, "Add", "Sub", "Mul", "Div")
def binary_factory(builder, module, args):
    first, second = args
    if module.broadcast == 1 and module.axis is not None:
        if builder.is_variable(second):
            raise Unsupported("legacy axis broadcasting of a variable operand")
        second = old_style_broadcast(builder.evaluate_operand(first), second, module.axis)
    return binary(builder, module.math_op_function.__name__, first, second)


# The functional forms of a torch.fx trace, by the name of the ONNX operation each one is.
_BINARY_FUNCTIONS = {operator.add: "add", torch.add: "add", torch.Tensor.add: "add",
                     operator.sub: "sub", torch.sub: "sub", torch.Tensor.sub: "sub",
                     operator.mul: "mul", torch.mul: "mul", torch.Tensor.mul: "mul",
                     operator.truediv: "_onnx_div", torch.div: "_onnx_div", torch.Tensor.div: "_onnx_div"}


def binary_function_factory(builder, function, args):
    first, second = args[:2]  # the keyword-only alpha and rounding mode are refused before (graph.py)
    return binary(builder, _BINARY_FUNCTIONS[function], first, second)


for _function in _BINARY_FUNCTIONS:
    register(_function)(binary_function_factory)


def binary(builder, op: str, first, second):
    variable = [builder.is_variable(a) for a in (first, second)]
    if all(variable):
        return _two_variables(builder, op, first, second)
    x, constant = (first, second) if variable[0] else (second, first)
    constant = _as_tensor(builder, constant)
    if op == "add":
        return affine(builder, x, shift=constant)
    if op == "sub":
        return affine(builder, x, shift=-constant) if variable[0] else affine(builder, x, -torch.ones(()), constant)
    if op == "mul":
        return affine(builder, x, scale=constant)
    if op == "_onnx_div" and variable[0]:
        return affine(builder, x, scale=1.0 / constant)
    if op == "_onnx_div":
        return affine(builder, reciprocal(builder, x), scale=constant)
    raise Unsupported(f"binary operation '{op}'")


def _two_variables(builder, op: str, first, second):
    if op in ("add", "sub"):
        rank = max(len(first.shape), len(second.shape))
        first, second = align_rank(builder, first, rank), align_rank(builder, second, rank)
        weights = (1.0, 1.0 if op == "add" else -1.0)
        return builder.add(WeightedSum(weights, [first.shape, second.shape]), [first, second])
    if op == "mul":
        return bilinear.multiply(builder, first, second)
    if op == "_onnx_div":
        return bilinear.divide(builder, first, second)
    raise Unsupported(f"binary operation '{op}' of two variables")


@register(OnnxNeg, "Neg")
@register(operator.neg)
@register(torch.neg)
@register(torch.Tensor.neg)
def neg_factory(builder, module, args):
    return affine(builder, args[0], scale=-torch.ones(()))


@register(OnnxSum, "Sum")
@register(OnnxMean, "Mean")
def sum_factory(builder, module, args):
    """Variadic Sum/Mean: variables add up in one WeightedSum, constants become a shift."""
    scale = 1.0 / len(args) if isinstance(module, OnnxMean) else 1.0
    variables = [a for a in args if builder.is_variable(a)]
    constants = [_as_tensor(builder, a) for a in args if not builder.is_variable(a)]
    rank = max([len(v.shape) for v in variables] + [c.dim() for c in constants])
    variables = [align_rank(builder, v, rank) for v in variables]
    total = builder.add(WeightedSum((scale,) * len(variables), [v.shape for v in variables]), variables)
    if constants:
        total = affine(builder, total, shift=sum(constants) * scale)
    return total


@register(OnnxPow, "Pow")
def pow_factory(builder, module, args):
    base, exponent = args
    if builder.is_variable(exponent):
        return _constant_base_power(builder, base, exponent)
    exponent = torch.as_tensor(exponent)
    values = torch.unique(exponent.double())
    if values.numel() == 1:
        value = float(values[0])
        return base if value == 1.0 else builder.add(Power(value), [base])
    # several exponents: each one's power on the whole operand, kept where that exponent applies
    total = None
    for value in values.tolist():
        power = base if value == 1.0 else builder.add(Power(value), [base])
        part = affine(builder, power, scale=(exponent.double() == value).to(builder.dtype))
        total = part if total is None else binary(builder, "add", total, part)
    return total


def _constant_base_power(builder, base, exponent):
    """b ** x = exp(x ln b) for a constant b > 0 (elementwise, broadcast)."""
    if builder.is_variable(base):
        raise Unsupported("Pow of a variable to a variable exponent")
    base = torch.as_tensor(base, dtype=torch.float64)
    if not bool((base > 0).all()):
        raise Unsupported("Pow of a constant base that is not positive to a variable exponent")
    return builder.add(Exp(), [affine(builder, exponent, scale=torch.log(base).to(builder.dtype))])
