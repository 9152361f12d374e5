"""Softmax, decomposed into rules that already exist: differences, exp, a sum and a reciprocal.

softmax(x)_i = 1 / sum_j exp(x_j - x_i), so its IBP and linear bounds follow from those of
WeightedSum, Exp, Reduce and Reciprocal without a rule of its own. Unlike exp(x_i) / sum_j
exp(x_j) it never overflows for large logits (the term j = i is exp(0) = 1, the sum is at least
1), as onnxruntime's own max-shifted evaluation does not, and its bounds are tighter: the
differences cancel the logits' common part before the exponential. The pairs cost n times the
logits, so long softmax axes (attention over many tokens) keep exp(x_i) / sum_j exp(x_j).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
from torch import nn

from verifier.bounds.arith import WeightedSum
from verifier.bounds.bilinear import multiply
from verifier.bounds.core import Unsupported, register
from verifier.bounds.linear import Reduce
from verifier.bounds.shape import Reshape
from verifier.bounds.smooth import Exp, reciprocal

# Most pair elements (logits times the softmax axis) for the pairwise form.
PAIRWISE_LIMIT = 4096


def _softmax(builder, x, axis: int):
    shape = x.shape
    if math.prod(shape) * shape[axis] > PAIRWISE_LIMIT:
        return _softmax_by_sum(builder, x, axis)
    rows = builder.add(Reshape(shape, shape[:axis + 1] + (1,) + shape[axis + 1:]), [x])   # x_i
    columns = builder.add(Reshape(shape, shape[:axis] + (1,) + shape[axis:]), [x])       # x_j
    pairs = shape[:axis + 1] + (shape[axis],) + shape[axis + 1:]
    differences = builder.add(WeightedSum((1.0, -1.0), [columns.shape, rows.shape]), [columns, rows])
    exponentials = builder.add(Exp(), [differences])
    total = builder.add(Reduce((axis + 1,), False, 1.0, pairs), [exponentials])
    return reciprocal(builder, total)


def _softmax_by_sum(builder, x, axis: int):
    """exp(x_i) / sum_j exp(x_j): one exponential per logit, but it overflows above about 88."""
    exponentials = builder.add(Exp(), [x])
    total = builder.add(Reduce((axis,), True, 1.0, exponentials.shape), [exponentials])
    return multiply(builder, exponentials, reciprocal(builder, total))


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
