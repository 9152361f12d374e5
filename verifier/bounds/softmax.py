"""Softmax, decomposed into rules that already exist: exp, a sum, a reciprocal and a product.

softmax(x)_i = exp(x_i) * 1 / sum_j exp(x_j), so its IBP and linear bounds follow from those of
Exp, Reduce, Reciprocal and Multiply without a rule of its own.
"""

from __future__ import annotations

import math

from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
from torch import nn

from verifier.bounds.bilinear import multiply
from verifier.bounds.core import Unsupported, register
from verifier.bounds.linear import Reduce
from verifier.bounds.shape import Reshape
from verifier.bounds.smooth import Exp, reciprocal


def _softmax(builder, x, axis: int):
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


