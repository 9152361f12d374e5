"""Pooling: average pooling (linear) and max pooling (relaxed).

MaxPool's relaxation is the DeepPoly one: z >= x_j for the window element j with the largest
lower bound, and z <= max_i u_i, or z = x_j exactly when x_j dominates its window.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verifier.bounds.core import Backward, Interval, Rule, Unsupported, register, row_sum

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _tuple(value, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


class AvgPool(Rule):
    """Average pooling as a sum pooling (a convolution with a ones kernel) times a per-position scale."""

    sums_products = True
    monotone = True

    def __init__(self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}[type(module)]
        d = self.dims
        self.kernel = _tuple(module.kernel_size, d)
        self.stride = _tuple(module.stride if module.stride is not None else module.kernel_size, d)
        self.padding = _tuple(module.padding, d)
        self.in_shape, self.out_shape = in_shape, out_shape
        spatial_in = in_shape[-d:]
        self.register_buffer("ones", torch.ones((1, 1, *self.kernel), dtype=torch.float64))
        ones = torch.ones((1, 1, *spatial_in), dtype=torch.float64)
        summed = _CONV[d](ones, self.ones, None, self.stride, self.padding)
        if tuple(summed.shape[2:]) != tuple(out_shape[-d:]):
            raise Unsupported("average pooling with ceil_mode")
        averaged = module(ones)
        self.register_buffer("scale", (averaged / summed)[0, 0])
        self.output_padding = tuple(
            spatial_in[i] - ((out_shape[-d + i] - 1) * self.stride[i] - 2 * self.padding[i] + self.kernel[i])
            for i in range(d)
        )

    def forward(self, x: Tensor) -> Tensor:
        images = x.reshape(-1, 1, *self.in_shape[-self.dims:])
        summed = _CONV[self.dims](images, self.ones.to(x.dtype), None, self.stride, self.padding)
        return (summed[:, 0] * self.scale.to(x.dtype)).reshape(x.shape[0], *self.out_shape)

    @property
    def rounding_terms(self) -> int:
        return math.prod(self.kernel) + 1

    def ibp(self, x: Interval) -> Interval:
        terms = 1
        for size in self.kernel:
            terms *= size
        return Interval.from_center(self.forward(x.center), self.forward(x.radius),
                                    self.forward(x.center.abs() + x.radius), terms + 1)

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        lead = coeffs.shape[:2]
        maps = (coeffs.reshape(-1, *self.out_shape[-self.dims:]) * self.scale.to(coeffs.dtype)).unsqueeze(1)
        back = _CONV_T[self.dims](maps, self.ones.to(coeffs.dtype), None, self.stride, self.padding,
                                  self.output_padding)
        return Backward([back.reshape(*lead, *self.in_shape)])


class MaxPool2d(Rule):
    """2-d max pooling over the trailing (H, W) axes of the per-sample shape."""

    needs_bounds = True
    exact = True

    def __init__(self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        if getattr(module, "return_indices", False):
            raise Unsupported("MaxPool returning indices")
        self.module = module
        self.in_shape, self.out_shape = in_shape, out_shape
        height, width = in_shape[-2:]
        out_h, out_w = out_shape[-2:]
        kernel, stride = _tuple(module.kernel_size, 2), _tuple(module.stride or module.kernel_size, 2)
        padding, dilation = _tuple(module.padding, 2), _tuple(module.dilation, 2)
        extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p))
                 for o, s, d, k, n, p in zip((out_h, out_w), stride, dilation, kernel, (height, width), padding)]
        positions = torch.arange(1, height * width + 1, dtype=torch.float64).reshape(1, 1, height, width)
        positions = F.pad(positions, (padding[1], padding[1] + extra[1], padding[0], padding[0] + extra[0]))
        windows = F.unfold(positions, kernel, dilation=dilation, stride=stride)[0]  # [K, L]
        if windows.shape[1] != out_h * out_w:
            raise Unsupported("max pooling geometry")
        if (windows == 0).all(dim=0).any():
            raise Unsupported("max pooling with a window made only of padding")
        self.register_buffer("window_index", windows.long() - 1)  # -1 marks padding

    def forward(self, x: Tensor) -> Tensor:
        images = x.reshape(-1, *self.in_shape[-3:])
        return self.module(images).reshape(x.shape[0], *self.out_shape)

    def ibp(self, x: Interval) -> Interval:
        return Interval(self.forward(x.lower), self.forward(x.upper))

    def _windows(self, bound: Tensor) -> Tensor:
        """[B, planes, K, L] values of each window element; padding reads as -inf."""
        flat = bound.reshape(bound.shape[0], -1, self.in_shape[-2] * self.in_shape[-1])
        gathered = flat[:, :, self.window_index.clamp(min=0)]
        return gathered.masked_fill(self.window_index < 0, -torch.inf)

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        lower, upper = self._windows(x.lower), self._windows(x.upper)
        # The element with the largest lower bound, never a padding cell: a real element whose
        # lower bound is -inf (after a Log at 0, say) ranks above the padding's -inf.
        padding = self.window_index < 0
        lowest = torch.finfo(lower.dtype).min
        choice = torch.where(padding, -torch.inf, lower.clamp(min=lowest)).max(dim=2).indices  # [B, planes, L]
        best_lower = lower.gather(2, choice.unsqueeze(2)).squeeze(2)
        upper_max = upper.max(dim=2).values
        others = upper.scatter(2, choice.unsqueeze(2), -torch.inf).max(dim=2).values
        exact = best_lower >= others
        source = self.window_index[choice, torch.arange(choice.shape[-1], device=choice.device)]
        batch, rows = coeffs.shape[:2]
        flat = coeffs.reshape(batch, rows, source.shape[1], -1)
        positive = flat.clamp(min=0)
        negative = flat - positive
        exact_rows = exact.unsqueeze(1)
        to_input = positive + torch.where(exact_rows, negative, 0.0)
        # z <= max_i u_i for the negative coefficients (none where the row's coefficient is 0,
        # which keeps an infinite u_i from turning 0 * inf into nan)
        bias = row_sum(torch.where(exact_rows | (negative == 0), 0.0, negative * upper_max.unsqueeze(1)))
        plane_size = self.in_shape[-2] * self.in_shape[-1]
        index = source.unsqueeze(1).expand(batch, rows, *source.shape[1:])
        back = flat.new_zeros(batch, rows, source.shape[1], plane_size).scatter_add_(3, index, to_input)
        return Backward([back.reshape(batch, rows, *self.in_shape)], bias)


@register(nn.AvgPool1d, "AveragePool")
@register(nn.AvgPool2d, "AveragePool")
@register(nn.AvgPool3d, "AveragePool")
def avg_pool_factory(builder, module, args):
    out_shape = tuple(builder.evaluate(module, args).shape)
    return builder.add(AvgPool(module, args[0].shape, out_shape), [args[0]])


@register(nn.MaxPool2d, "MaxPool")
def max_pool_factory(builder, module, args):
    out_shape = tuple(builder.evaluate(module, args).shape)
    if len(args[0].shape) < 3:
        raise Unsupported("MaxPool on an input without channel and spatial axes")
    return builder.add(MaxPool2d(module, args[0].shape, out_shape), [args[0]])


@register(F.max_pool2d)
def max_pool_function_factory(builder, function, args):
    x, kernel, stride, padding, dilation, ceil_mode, return_indices = (list(args) + [None, 0, 1, False, False])[:7]
    if return_indices:
        raise Unsupported("max_pool2d returning indices")
    module = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=bool(ceil_mode))
    return max_pool_factory(builder, module, [x])


@register(F.avg_pool2d)
def avg_pool_function_factory(builder, function, args):
    x, kernel, stride, padding, ceil_mode, count_include_pad, divisor = (
        list(args) + [None, 0, False, True, None])[:7]
    module = nn.AvgPool2d(kernel, stride, padding, bool(ceil_mode), bool(count_include_pad), divisor)
    return avg_pool_factory(builder, module, [x])
