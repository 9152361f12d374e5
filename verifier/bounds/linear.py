"""The affine family: Linear (Gemm), MatMul with a constant, Conv, ConvTranspose, BatchNorm, reductions.

Each rule is exact: IBP uses the centre/radius form (`W c + b ± |W| r`) and the backward rule is
the adjoint of the linear map.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from onnx2torch.node_converters import global_average_pool, matmul, reduce
from torch import Tensor, nn

from verifier.bounds.arith import affine, binary
from verifier.bounds.bilinear import matmul_variables
from verifier.bounds.core import Backward, Interval, Rule, Unsupported, exactly_zero, register, rounding, row_sum
from verifier.bounds.patches import Patches
from verifier.bounds.shape import Reshape, Transpose

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class WeightedSum(Rule):
    """A constant weighted sum of the input plus an optional bias (Linear, Conv, ConvTranspose),
    given by `apply(x, weight, bias)`. IBP is `W c + b +- |W| r`; its sums of absolute terms
    `|W| (|c| + r) + |b|` are also the magnitude of the rounding bound (asked right after IBP, so
    they are kept from it), and |W| is computed once per weight tensor: the largest layers hold
    tens of millions of weights."""

    sums_products = True

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.apply(x, self.weight, self.bias)

    def _absolute_weight(self) -> Tensor:
        cached = self.__dict__.get("_absolute")
        if cached is None or cached[0] is not self.weight:  # after `.to()` the new weight gets its own
            cached = (self.weight, self.weight.abs())
            self.__dict__["_absolute"] = cached
        return cached[1]

    def _sums(self, x: Interval) -> Tensor:
        return self.apply(x.center.abs() + x.radius, self._absolute_weight(),
                          None if self.bias is None else self.bias.abs())

    def magnitude(self, x: Interval) -> Tensor:
        kept = self.__dict__.get("_sums_of")
        return kept[1] if kept is not None and kept[0] is x else self._sums(x)

    def forward_forms(self, x, bounds: list[Interval]):
        positive, negative = self.weight.clamp(min=0), self.weight.clamp(max=0)

        def side(main: Tensor, other: Tensor, bias: Tensor | None) -> Tensor:
            return self.apply(main, positive, bias) + self.apply(other, negative, None)

        return type(x)(x.rows(side(x.columns(x.lower), x.columns(x.upper), None)),
                       side(x.lower_bias, x.upper_bias, self.bias),
                       x.rows(side(x.columns(x.upper), x.columns(x.lower), None)),
                       side(x.upper_bias, x.lower_bias, self.bias))

    def ibp(self, x: Interval) -> Interval:
        magnitude = self._sums(x)
        self.__dict__["_sums_of"] = (x, magnitude)
        return Interval.from_center(self.forward(x.center), self.apply(x.radius, self._absolute_weight(), None),
                                    magnitude, self.rounding_terms)


class Linear(WeightedSum):
    """`y = x @ weight.T + bias` on the last axis; weight [out, in]."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @property
    def rounding_terms(self) -> int:
        return self.weight.shape[1] + 1

    def active_terms(self, x: Interval) -> Tensor:
        # the inputs that may be non-zero, and the bias: [B, ..., 1], the same for every output
        return (~exactly_zero(x)).sum(-1, keepdim=True) + 1

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        bias = 0.0
        if self.bias is not None:
            bias = row_sum(coeffs @ self.bias)
        return Backward([coeffs @ self.weight], bias)


class Conv(WeightedSum):
    """N-d convolution on the trailing (channels, *spatial) axes of the per-sample shape."""

    def __init__(self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = len(module.kernel_size)
        padding = module.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise Unsupported(f"convolution padding '{padding}'")
            padding = (0,) * self.dims
        if module.padding_mode != "zeros":
            raise Unsupported(f"convolution padding mode '{module.padding_mode}'")
        self.register_buffer("weight", module.weight)
        self.register_buffer("bias", module.bias)
        self.stride, self.padding, self.dilation = module.stride, padding, module.dilation
        self.groups = module.groups
        self.in_shape, self.out_shape = in_shape, out_shape
        kernel = module.weight.shape[2:]
        self.output_padding = tuple(
            in_shape[-self.dims + i] - ((out_shape[-self.dims + i] - 1) * self.stride[i] - 2 * padding[i]
                                        + self.dilation[i] * (kernel[i] - 1) + 1)
            for i in range(self.dims)
        )

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        images = x.reshape(-1, *self.in_shape[-self.dims - 1:])
        out = _CONV[self.dims](images, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return out.reshape(x.shape[0], *self.out_shape)

    @property
    def rounding_terms(self) -> int:
        return self.weight[0].numel() + 1

    def active_terms(self, x: Interval) -> Tensor:
        # inputs that may be non-zero under each output's window, over all input channels (a
        # bound for grouped convolutions, capped by the kernel's size), and the bias: [B, 1, *spatial]
        window = torch.ones(1, self.in_shape[-self.dims - 1], *self.weight.shape[2:], dtype=x.lower.dtype,
                            device=x.lower.device)
        maps = (~exactly_zero(x)).to(x.lower.dtype).reshape(-1, *self.in_shape[-self.dims - 1:])
        counts = _CONV[self.dims](maps, window, None, self.stride, self.padding, self.dilation)
        counts = counts.reshape(x.lower.shape[0], *self.out_shape[:-self.dims - 1], 1, *self.out_shape[-self.dims:])
        return counts.clamp(max=self.weight[0].numel()) + 1

    @property
    def accepts_patches(self) -> bool:
        return self.dims == 2 and len(self.in_shape) in (3, 4) and self.in_shape[:-3] in ((), (1,))

    def _backward_patches(self, coeffs: Patches) -> Backward:
        batch, rows = coeffs.values.shape[:2]
        bias = 0.0
        if self.bias is not None:
            bias = coeffs.inner(self.bias.view(-1, 1, 1).expand(self.out_shape[-3:]).unsqueeze(0))
        # Window cells outside the map hold no neuron; the transposed convolution would spread them.
        values = coeffs.inside() * coeffs.values
        values = values.reshape(batch * rows, *values.shape[2:])
        values = values.contiguous(memory_format=torch.channels_last)
        back = F.conv_transpose2d(values, self.weight, None, self.stride, 0, 0, self.groups, self.dilation)
        stride = (coeffs.stride[0] * self.stride[0], coeffs.stride[1] * self.stride[1])
        padding = (coeffs.padding[0] * self.stride[0] + self.padding[0],
                   coeffs.padding[1] * self.stride[1] + self.padding[1])
        moved = Patches(back.reshape(batch, rows, *back.shape[1:]), stride, padding, coeffs.position,
                        self.in_shape)
        return Backward([moved if moved.worth_keeping else moved.to_dense()], bias)

    def backward(self, coeffs: Tensor | Patches, x: Interval | None = None) -> Backward:
        if isinstance(coeffs, Patches):
            return self._backward_patches(coeffs)
        lead = coeffs.shape[:2]
        maps = coeffs.reshape(-1, *self.out_shape[-self.dims - 1:])
        bias = 0.0
        if self.bias is not None:
            per_channel = coeffs.reshape(*lead, -1, *self.out_shape[-self.dims - 1:])
            per_channel = per_channel.sum(dim=(2, *range(4, per_channel.dim())))
            bias = per_channel @ self.bias
        if self.dims == 2:  # oneDNN's transposed convolution is several times faster channels-last
            maps = maps.contiguous(memory_format=torch.channels_last)
        back = _CONV_T[self.dims](maps, self.weight, None, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)
        return Backward([back.reshape(*lead, *self.in_shape)], bias)


class ConvTranspose(WeightedSum):
    """N-d transposed convolution; its adjoint is the plain convolution with the same weight."""

    def __init__(self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = len(module.kernel_size)
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise Unsupported("transposed convolution with non-zero padding mode")
        self.register_buffer("weight", module.weight)
        self.register_buffer("bias", module.bias)
        self.stride, self.padding, self.dilation = module.stride, module.padding, module.dilation
        self.output_padding, self.groups = module.output_padding, module.groups
        self.in_shape, self.out_shape = in_shape, out_shape

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        images = x.reshape(-1, *self.in_shape[-self.dims - 1:])
        out = _CONV_T[self.dims](images, weight, bias, self.stride, self.padding, self.output_padding,
                                 self.groups, self.dilation)
        return out.reshape(x.shape[0], *self.out_shape)

    @property
    def rounding_terms(self) -> int:
        return self.weight.shape[0] * self.weight[0, 0].numel() + 1

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        lead = coeffs.shape[:2]
        maps = coeffs.reshape(-1, *self.out_shape[-self.dims - 1:])
        bias = 0.0
        if self.bias is not None:
            per_channel = coeffs.reshape(*lead, -1, *self.out_shape[-self.dims - 1:])
            bias = per_channel.sum(dim=(2, *range(4, per_channel.dim()))) @ self.bias
        back = _CONV[self.dims](maps, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return Backward([back.reshape(*lead, *self.in_shape)], bias)


class Reduce(Rule):
    """Sum (times `factor`, e.g. 1/n for a mean) over per-sample axes."""

    sums_products = True

    def __init__(self, axes: tuple[int, ...], keepdim: bool, factor: float, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.axes, self.keepdim, self.factor, self.in_shape = axes, keepdim, factor, in_shape
        self.monotone = factor >= 0

    def on_integers(self) -> str:
        return "wraps" if float(self.factor).is_integer() else "no"  # a sum, but not a mean

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=tuple(a + 1 for a in self.axes), keepdim=self.keepdim) * self.factor

    @property
    def rounding_terms(self) -> int:
        return math.prod(self.in_shape[axis] for axis in self.axes) + 1

    def ibp(self, x: Interval) -> Interval:
        terms = 1
        for axis in self.axes:
            terms *= self.in_shape[axis]
        low, high = (x.lower, x.upper) if self.factor >= 0 else (x.upper, x.lower)
        allowance = rounding(x.lower.dtype, terms)

        # each end is the sum of its own ends, whose rounding is sized by them: a sum of
        # exponentials from 1 to 5e8 (a softmax's) keeps its lower end near 1, not 1 - 230
        def end(values: Tensor, outwards: float) -> Tensor:
            size = values.abs().sum(dim=tuple(a + 1 for a in self.axes), keepdim=self.keepdim) * abs(self.factor)
            return self.forward(values) + outwards * allowance * size

        return Interval(end(low, -1.0), end(high, 1.0))

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        if not self.keepdim:
            for axis in sorted(self.axes):
                coeffs = coeffs.unsqueeze(axis + 2)
        return Backward([(coeffs * self.factor).expand(*coeffs.shape[:2], *self.in_shape)])


@register(nn.Linear, "Gemm")
def linear_factory(builder, module, args):
    # the module's own tensors, not copies: gradients reach them (the library's certified training)
    return _linear(builder, args[0], builder.parameter(module.weight), builder.parameter(module.bias))


@register(F.linear)
def linear_function_factory(builder, function, args):
    x, weight, bias = (list(args) + [None])[:3]
    return _linear(builder, x, weight, bias)


def _linear(builder, x, weight, bias):
    """x @ weight.T + bias, where the weight or the bias may be a variable (a perturbed parameter)."""
    if not builder.is_variable(weight) and not builder.is_variable(bias):
        return builder.add(Linear(weight, bias), [x])
    if builder.is_variable(weight):
        out = _matmul(builder, x, builder.add(Transpose((1, 0)), [weight]))
    else:
        out = builder.add(Linear(weight, None), [x])
    return out if bias is None else binary(builder, "add", out, bias)


@register(matmul.OnnxMatMul, "MatMul")
def matmul_factory(builder, module, args):
    return _matmul(builder, *args)


@register(operator.matmul)
@register(torch.matmul)
@register(torch.Tensor.matmul)
def matmul_function_factory(builder, function, args):
    return _matmul(builder, *args)


def _matmul(builder, left, right):
    if builder.is_variable(left) and builder.is_variable(right):
        return matmul_variables(builder, left, right)
    if builder.is_variable(left):
        weight = builder.float_constant(right)
        if weight.dim() == 1:
            out = builder.add(Linear(weight.unsqueeze(0), None), [left])
            return builder.add(Reshape(out.shape, out.shape[:-1]), [out])
        if weight.dim() != 2:
            raise Unsupported("MatMul with a constant of rank above 2")
        return builder.add(Linear(weight.T.contiguous(), None), [left])
    weight = builder.float_constant(left)
    if weight.dim() != 2:
        raise Unsupported("MatMul of a constant of rank other than 2 with a variable")
    if len(right.shape) == 1:
        return builder.add(Linear(weight, None), [right])
    rank = len(right.shape)
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    flipped = builder.add(Transpose(swap), [right])
    product = builder.add(Linear(weight, None), [flipped])
    return builder.add(Transpose(swap), [product])


def _fixed_parameters(builder, module, what: str) -> None:
    if any(builder.is_variable(builder.parameter(t)) for t in (module.weight, module.bias)):
        raise Unsupported(f"a perturbed {what} weight or bias")


@register(nn.Conv1d, "Conv")
@register(nn.Conv2d, "Conv")
@register(nn.Conv3d, "Conv")
def conv_factory(builder, module, args):
    _fixed_parameters(builder, module, "convolution")
    out_shape = tuple(builder.evaluate(module, args).shape)
    return builder.add(Conv(module, args[0].shape, out_shape), [args[0]])


@register(nn.ConvTranspose1d, "ConvTranspose")
@register(nn.ConvTranspose2d, "ConvTranspose")
@register(nn.ConvTranspose3d, "ConvTranspose")
def conv_transpose_factory(builder, module, args):
    _fixed_parameters(builder, module, "transposed convolution")
    out_shape = tuple(builder.evaluate(module, args).shape)
    return builder.add(ConvTranspose(module, args[0].shape, out_shape), [args[0]])


@register(nn.BatchNorm1d, "BatchNormalization")
@register(nn.BatchNorm2d, "BatchNormalization")
@register(nn.BatchNorm3d, "BatchNormalization")
def batch_norm_factory(builder, module, args):
    _fixed_parameters(builder, module, "batch norm")
    if module.running_mean is None or module.running_var is None:
        raise Unsupported("BatchNormalization without running statistics")
    x = args[0]
    scale = 1.0 / torch.sqrt(module.running_var.double() + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.double()
    shift = -module.running_mean.double() * scale
    if module.bias is not None:
        shift = shift + module.bias.double()
    trailing = len(x.shape) - 2  # per-sample shape (n, C, *spatial)
    if trailing < 0:
        raise Unsupported("BatchNormalization on an input without a channel axis")
    view = (-1,) + (1,) * trailing
    return affine(builder, x, scale.reshape(view), shift.reshape(view))


def _reduce(builder, x, axes, keepdim: bool, mean: bool):
    rank = len(x.shape)
    axes = tuple(sorted({int(a) % rank for a in axes})) if axes is not None and len(axes) else tuple(range(rank))
    count = 1
    for a in axes:
        count *= x.shape[a]
    return builder.add(Reduce(axes, keepdim, 1.0 / count if mean else 1.0, x.shape), [x])


@register(torch.sum)
@register(torch.mean)
@register(torch.Tensor.sum)
@register(torch.Tensor.mean)
def reduce_function_factory(builder, function, args):
    """sum / mean (x, dim=None, keepdim=False): a dim of None reduces every axis."""
    x, axes, keepdim = (list(args) + [None, False])[:3]
    if isinstance(axes, int):
        axes = (axes,)
    return _reduce(builder, x, axes, bool(keepdim), function in (torch.mean, torch.Tensor.mean))


@register(reduce.OnnxReduceStaticAxes, "ReduceSum", "ReduceMean")
def reduce_static_factory(builder, module, args):
    if module.operation_type not in ("ReduceSum", "ReduceMean"):
        raise Unsupported(module.operation_type)
    return _reduce(builder, args[0], module.axes, module.keepdims, module.operation_type == "ReduceMean")


@register(reduce.OnnxReduceSumStaticAxes, "ReduceSum")
def reduce_sum_static_factory(builder, module, args):
    if not module._axes and module._noop_with_empty_axes:
        return args[0]
    return _reduce(builder, args[0], module._axes, bool(module._keepdims), False)


@register(reduce.OnnxReduceSumDynamicAxes, "ReduceSum")
def reduce_sum_dynamic_factory(builder, module, args):
    axes = builder.constant_value(args[1]) if len(args) > 1 else None
    if (axes is None or len(axes) == 0) and module._noop_with_empty_axes:
        return args[0]
    axes = None if axes is None else [int(a) for a in torch.as_tensor(axes).reshape(-1)]
    return _reduce(builder, args[0], axes, bool(module._keepdims), False)


@register(global_average_pool.OnnxGlobalAveragePool, "GlobalAveragePool")
@register(global_average_pool.OnnxGlobalAveragePoolWithKnownInputShape, "GlobalAveragePool")
def global_average_pool_factory(builder, module, args):
    x = args[0]
    return _reduce(builder, x, tuple(range(2, len(x.shape))), True, True)
