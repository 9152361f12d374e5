"""Softmax, decomposed into rules that already exist: differences, exp, a sum and a reciprocal.

softmax(x)_i = 1 / sum_j exp(x_j - x_i), so its IBP and linear bounds follow from those of
WeightedSum, Exp, Reduce and Reciprocal without a rule of its own. Unlike exp(x_i) / sum_j
exp(x_j) it never overflows for large logits (the term j = i is exp(0) = 1, the sum is at least
1), as onnxruntime's own max-shifted evaluation does not, and its bounds are tighter: the
differences cancel the logits' common part before the exponential. The pairs cost n times the
logits, so long softmax axes (attention over many tokens) keep exp(x_i) / sum_j exp(x_j),
followed by SoftmaxOutput too, whose interval from the logits stays finite where the
exponentials overflow.

In the pairwise form, the decomposition's nodes compute the exact softmax (no execution
allowance of their own: onnxruntime never computes them), and a last node, SoftmaxOutput, stands
for onnxruntime's softmax, exp(fl(x_j - max)) / sum: its allowance is FUNCTION_ROUNDINGS + n + 2
+ D roundings of the output (n exponentials of a few ulps each, a sum of n terms, a division, and
the rounding of each difference d, which costs |d| <= D, the group's spread, up to 89, beyond
which the term is below e^-88). Its interval is the softmax's own from the logits' interval,
computed stably, and in [0, 1]; its backward step uses sum_i y_i = 1: coefficients that are
equal along a softmax group become a constant. Both allow CLIP_ERROR where they use the
decomposition's value (the interval of its input y, and the coefficients passed to it), so a
network bounded in real arithmetic keeps [0, 1] exactly.

The differences are clipped at CLIP (80) before the exponential, so that nothing overflows
(logits 200 apart took the sum's interval to infinity). Where the clip acts, some term exceeds
e^CLIP and y_i is below CLIP_ERROR = e^-CLIP both before and after: the change is below it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
from torch import Tensor, nn

from verifier.bounds.activation import ReLU
from verifier.bounds.arith import WeightedSum
from verifier.bounds.bilinear import multiply
from verifier.bounds.core import (
    FUNCTION_ROUNDINGS,
    Backward,
    Interval,
    Rule,
    Unsupported,
    execution_rounding,
    register,
    row_sum,
)
from verifier.bounds.linear import Reduce
from verifier.bounds.relaxation import Elementwise, LinearRelaxation
from verifier.bounds.shape import Reshape
from verifier.bounds.smooth import Exp, reciprocal

# Most pair elements (logits times the softmax axis) for the pairwise form.
PAIRWISE_LIMIT = 4096
CLIP = 80.0
CLIP_ERROR = math.exp(-CLIP)


class Ceiling(Elementwise):
    """min(x, c) = c - relu(c - x), relaxed by ReLU's lines on c - x."""

    exact = True

    def __init__(self, ceiling: float) -> None:
        super().__init__()
        self.ceiling = ceiling

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, max=self.ceiling)

    def ibp(self, x: Interval) -> Interval:
        return Interval(self.forward(x.lower), self.forward(x.upper))

    def relax(self, lower: Tensor, upper: Tensor, alpha: list[Tensor] | None = None) -> LinearRelaxation:
        c = self.ceiling
        r = ReLU().relax(c - upper, c - lower)  # lines of relu(t), t = c - x
        # y = c - relu(t): its lower line is c minus relu's upper one, and the other way round
        return LinearRelaxation(r.upper_slope, c - r.upper_slope * c - r.upper_intercept,
                                r.lower_slope, c - r.lower_slope * c - r.lower_intercept)


class SoftmaxOutput(Rule):
    """onnxruntime's softmax along `axis` (of the per-sample shape) of `logits`, whose exact value
    `y` holds (inputs: y, logits); see the module docstring."""

    needs_bounds = True

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, y: Tensor, logits: Tensor) -> Tensor:
        return y

    def ibp(self, y: Interval, logits: Interval) -> Interval:
        dim = self.axis + 1
        low, high = logits.lower.double(), logits.upper.double()
        # y_i is least where x_i is least and every other x_j greatest: 1 / sum_j exp(u_j - l_i)
        least = _pairs(high, low, dim)
        most = _pairs(low, high, dim)
        # float64 differences, logsumexp and exp err by a few ulps of the differences' size, then
        # the cast rounds once more: widened by 64 float64 ulps of (1 + spread), then a step outwards
        slack = 64 * torch.finfo(torch.float64).eps * (1 + _spread(logits, dim).double())
        lower = (torch.exp(-torch.logsumexp(least, dim=dim + 1)) * (1 - slack)).to(y.lower.dtype)
        upper = (torch.exp(-torch.logsumexp(most, dim=dim + 1)) * (1 + slack)).to(y.lower.dtype)
        lower = torch.nextafter(lower, torch.zeros_like(lower)).clamp(min=0)
        upper = torch.nextafter(upper, torch.ones_like(upper)).clamp(max=1)
        # the decomposition's y is within CLIP_ERROR of the softmax (module docstring)
        below = torch.nextafter(y.lower - CLIP_ERROR, torch.full_like(lower, -torch.inf))
        above = torch.nextafter(y.upper + CLIP_ERROR, torch.full_like(upper, torch.inf))
        return Interval(torch.fmax(lower, below), torch.fmin(upper, above))

    def execution_error(self, y: Interval, logits: Interval) -> Tensor | None:
        if self.exec_dtype is None:
            return None
        size = torch.maximum(y.lower.abs(), y.upper.abs()).clamp(max=1)
        # exp(fl(x_j - max)): the subtraction's rounding of d costs |d| roundings of the term
        shift = torch.ceil(_spread(logits, self.axis + 1).clamp(max=89))
        terms = FUNCTION_ROUNDINGS + y.lower.shape[self.axis + 1] + 2 + shift
        return execution_rounding(self.exec_dtype, terms, size)

    def backward(self, coeffs: Tensor, y: Interval, logits: Interval) -> Backward:
        dim = self.axis + 2
        constant = coeffs.amax(dim, keepdim=True) == coeffs.amin(dim, keepdim=True)
        shift = torch.where(constant, coeffs.amax(dim, keepdim=True), 0.0)  # sum_i y_i = 1 in each group
        rest = coeffs - shift
        # through the decomposition's y, within CLIP_ERROR of the softmax: that much under each coefficient
        return Backward([rest, None], row_sum(shift) - CLIP_ERROR * row_sum(rest.abs()))


def _spread(logits: Interval, dim: int) -> Tensor:
    """[B, *shape]: max upper - min lower of each softmax group (at tensor axis `dim`), which
    bounds |x_j - max_k x_k| for every logit of the group."""
    return (logits.upper.amax(dim, keepdim=True) - logits.lower.amin(dim, keepdim=True)).expand_as(logits.lower)


def _pairs(first: Tensor, second: Tensor, dim: int) -> Tensor:
    """[..., n (i), n (j), ...] from two [..., n, ...] (softmax axis at `dim`): first_j - second_i,
    and 0 where j = i (the term exp(x_i - x_i) = 1)."""
    differences = first.unsqueeze(dim) - second.unsqueeze(dim + 1)
    n = differences.shape[dim]
    shape = [1] * differences.dim()
    shape[dim], shape[dim + 1] = n, n
    eye = torch.eye(n, dtype=torch.bool, device=differences.device).reshape(shape)
    return differences.masked_fill(eye, 0.0)


def _softmax(builder, x, axis: int):
    shape = x.shape
    if math.prod(shape) * shape[axis] > PAIRWISE_LIMIT:
        return _softmax_by_sum(builder, x, axis)
    runtime_dtype, builder.exec_dtype = builder.exec_dtype, None  # the exact softmax (module docstring)
    try:
        rows = builder.add(Reshape(shape, shape[:axis + 1] + (1,) + shape[axis + 1:]), [x])   # x_i
        columns = builder.add(Reshape(shape, shape[:axis] + (1,) + shape[axis:]), [x])       # x_j
        pairs = shape[:axis + 1] + (shape[axis],) + shape[axis + 1:]
        differences = builder.add(WeightedSum((1.0, -1.0), [columns.shape, rows.shape]), [columns, rows])
        exponentials = builder.add(Exp(), [builder.add(Ceiling(CLIP), [differences])])
        total = builder.add(Reduce((axis + 1,), False, 1.0, pairs), [exponentials])
        exact = reciprocal(builder, total)
    finally:
        builder.exec_dtype = runtime_dtype
    return builder.add(SoftmaxOutput(axis), [exact, x])


def _softmax_by_sum(builder, x, axis: int):
    """exp(x_i) / sum_j exp(x_j): one exponential per logit, but it overflows above about 88; the
    SoftmaxOutput node after it still keeps each output's interval within [0, 1], from the logits."""
    exponentials = builder.add(Exp(), [x])
    total = builder.add(Reduce((axis,), True, 1.0, exponentials.shape), [exponentials])
    return builder.add(SoftmaxOutput(axis), [multiply(builder, exponentials, reciprocal(builder, total)), x])


@register(nn.Softmax, "Softmax")
def softmax_factory(builder, module, args):
    x = args[0]
    return _softmax(builder, x, module.dim % len(x.shape))


@register(OnnxSoftmaxV1V11, "Softmax")
def softmax_legacy_factory(builder, module, args):
    if module.is_log:
        raise Unsupported("LogSoftmax")
    x = args[0]
    axis = module.axis % len(x.shape)
    flat_shape = x.shape[:axis] + (math.prod(x.shape[axis:]),)
    flat = builder.add(Reshape(x.shape, flat_shape), [x])
    out = _softmax(builder, flat, axis)
    return builder.add(Reshape(flat_shape, x.shape), [out])


@register(F.softmax)
@register(torch.softmax)
@register(torch.Tensor.softmax)
def softmax_function_factory(builder, function, args):
    x, axis = (list(args) + [None])[:2]
    if axis is None:
        raise Unsupported("softmax without a dim")
    return _softmax(builder, x, int(axis) % len(x.shape))
