"""Shape, layout and indexing operators: exact, so bounds and coefficients move through unchanged.

Reshape-like operators only reinterpret the row-major order; Transpose permutes axes; every other
pure selection (Slice, Gather with constant indices, Split, Expand, Pad, nearest Resize, ...) is
one `Select` rule, found by running the module on a tensor of element positions.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from onnx2torch.node_converters import (
    concat,
    expand,
    flatten,
    gather,
    identity,
    pad,
    resize,
    scatter_nd,
    split,
    squeeze,
    tile,
    transpose,
    unsqueeze,
)
from onnx2torch.node_converters import reshape as onnx_reshape
from onnx2torch.node_converters import shape as onnx_shape
from onnx2torch.node_converters import slice as onnx_slice
from onnx2torch.node_converters.dropout import OnnxDropoutDynamic
from torch import Tensor, nn

from verifier.bounds.core import Backward, Interval, Rule, Unsupported, factory_for, register, row_sum


class Reshape(Rule):
    """Reinterpret the row-major order of a per-sample shape as another shape."""

    exact = True
    monotone = True

    preserves_box = True
    selects_only = True

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def ibp(self, x: Interval) -> Interval:
        return Interval(self.forward(x.lower), self.forward(x.upper))

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        return Backward([coeffs.reshape(*coeffs.shape[:2], *self.in_shape)])


class Transpose(Rule):
    """Permute the per-sample axes by `perm`."""

    exact = True
    monotone = True

    preserves_box = True
    selects_only = True

    def __init__(self, perm: Sequence[int]) -> None:
        super().__init__()
        self.perm = tuple(perm)
        self.inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, *(p + 1 for p in self.perm))

    def ibp(self, x: Interval) -> Interval:
        return Interval(self.forward(x.lower), self.forward(x.upper))

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        return Backward([coeffs.permute(0, 1, *(p + 2 for p in self.inverse))])


class Select(Rule):
    """`y[j] = x_flat[index[j]]`, or the constant `fill[j]` where `index[j] == -1`."""

    exact = True
    monotone = True

    selects_only = True

    def __init__(self, index: Tensor, fill: Tensor, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.register_buffer("index", index.clamp(min=0))
        self.register_buffer("keep", index >= 0)
        self.register_buffer("fill", fill)
        self.has_fill = bool((index < 0).any())

    def forward(self, x: Tensor) -> Tensor:
        y = x.reshape(x.shape[0], -1)[:, self.index]
        if self.has_fill:
            y = torch.where(self.keep, y, self.fill.to(y.dtype))
        return y.reshape(x.shape[0], *self.out_shape)

    def ibp(self, x: Interval) -> Interval:
        return Interval(self.forward(x.lower), self.forward(x.upper))

    def backward(self, coeffs: Tensor, x: Interval | None = None) -> Backward:
        flat = coeffs.reshape(*coeffs.shape[:2], -1)
        bias = 0.0
        if self.has_fill:
            # zero coefficients on filled cells must contribute 0 even when the fill is -inf
            # (max pooling pads with -inf)
            filled = ~self.keep & (flat != 0)
            bias = row_sum(flat * torch.where(filled, self.fill.to(flat.dtype), 0.0))
            flat = flat * self.keep
        numel = 1
        for size in self.in_shape:
            numel *= size
        out = flat.new_zeros(*flat.shape[:2], numel).index_add_(2, self.index, flat)
        return Backward([out.reshape(*coeffs.shape[:2], *self.in_shape)], bias)


class Concat(Rule):
    """Concatenate variable inputs and constants along a per-sample axis."""

    exact = True
    monotone = True

    def on_integers(self) -> str:
        return "exact"

    def __init__(self, axis: int, parts: Sequence[Tensor | tuple[int, ...]]) -> None:
        """`parts` in order: a constant tensor, or the per-sample shape of the next variable input."""
        super().__init__()
        self.axis = axis
        self.layout: list[tuple[bool, int]] = []  # (is_variable, size along axis)
        for i, part in enumerate(parts):
            if isinstance(part, Tensor):
                self.register_buffer(f"constant_{i}", part)
                self.layout.append((False, part.shape[axis]))
            else:
                self.layout.append((True, part[axis]))

    def forward(self, *xs: Tensor) -> Tensor:
        batch = xs[0].shape[0]
        pieces, variables = [], iter(xs)
        for i, (is_variable, _) in enumerate(self.layout):
            if is_variable:
                pieces.append(next(variables))
            else:
                constant = getattr(self, f"constant_{i}")
                pieces.append(constant.to(xs[0].dtype).expand(batch, *constant.shape))
        return torch.cat(pieces, dim=self.axis + 1)

    def ibp(self, *xs: Interval) -> Interval:
        return Interval(self.forward(*(x.lower for x in xs)), self.forward(*(x.upper for x in xs)))

    def backward(self, coeffs: Tensor, *xs: Interval | None) -> Backward:
        sizes = [size for _, size in self.layout]
        chunks = torch.split(coeffs, sizes, dim=self.axis + 2)
        inputs, bias = [], 0.0
        for i, ((is_variable, _), chunk) in enumerate(zip(self.layout, chunks)):
            if is_variable:
                inputs.append(chunk)
            else:
                constant = getattr(self, f"constant_{i}").to(chunk.dtype)
                bias = bias + row_sum(chunk * constant)
        return Backward(inputs, bias)


def align_rank(builder, value, rank: int):
    """Prepend size-1 axes to a variable so that its per-sample rank is `rank` (for broadcasting)."""
    shape = value.shape
    if len(shape) >= rank:
        return value
    return builder.add(Reshape(shape, (1,) * (rank - len(shape)) + tuple(shape)), [value])


def _variables(builder, args) -> list:
    return [a for a in args if builder.is_variable(a)]


def _single_variable_first(builder, module, args) -> None:
    if not builder.is_variable(args[0]) or any(builder.is_variable(a) for a in args[1:]):
        raise Unsupported(f"{type(module).__name__} with a variable operand other than its data input")


@register(nn.Flatten, "Flatten")
@register(onnx_reshape.OnnxReshape, "Reshape")
@register(flatten.OnnxFlatten, "Flatten")
@register(squeeze.OnnxSqueezeStaticAxes, "Squeeze")
@register(squeeze.OnnxSqueezeDynamicAxes, "Squeeze")
@register(unsqueeze.OnnxUnsqueezeStaticAxes, "Unsqueeze")
@register(unsqueeze.OnnxUnsqueezeDynamicAxes, "Unsqueeze")
@register(nn.Identity, "Identity")
@register(identity.OnnxCopyIdentity, "Identity")
@register(nn.Dropout, "Dropout")
@register(OnnxDropoutDynamic, "Dropout")
@register(torch.flatten)
@register(torch.reshape)
@register(torch.squeeze)
@register(torch.unsqueeze)
@register(torch.Tensor.flatten)
@register(torch.Tensor.reshape)
@register(torch.Tensor.squeeze)
@register(torch.Tensor.unsqueeze)
@register(torch.Tensor.view)
@register(torch.Tensor.contiguous)
def reshape_like(builder, module, args):
    _single_variable_first(builder, module, args)
    out = builder.evaluate(module, args)
    return builder.add(Reshape(args[0].shape, out.shape), [args[0]])


@register(F.dropout)
def dropout_function_factory(builder, function, args):
    x, _, training = (list(args) + [0.5, True])[:3]
    if training:
        raise Unsupported("dropout in training mode (put the module in eval mode)")
    return x


@register(transpose.OnnxTranspose, "Transpose")
def transpose_factory(builder, module, args):
    _single_variable_first(builder, module, args)
    perm = module.perm if module.perm is not None else list(range(len(args[0].shape)))[::-1]
    return builder.add(Transpose(perm), [args[0]])


def _selection(builder, module, args) -> tuple[list[tuple[Tensor, Tensor, tuple[int, ...]]], bool]:
    """(index, fill, out_shape) per output of a module that only selects or fills elements, and
    whether it gives several outputs (a tuple) rather than one tensor."""
    shape = args[0].shape
    numel = 1
    for size in shape:
        numel *= size
    positions = torch.arange(1, numel + 1, dtype=torch.float64).reshape(shape)
    constants = [builder.constant_value(a) for a in args[1:]]
    plus = module(positions, *constants)
    minus = module(-positions, *constants)
    several = isinstance(plus, (tuple, list))
    plus = list(plus) if isinstance(plus, (tuple, list)) else [plus]
    minus = list(minus) if isinstance(minus, (tuple, list)) else [minus]
    return [_index_and_fill(builder, module, p, q) for p, q in zip(plus, minus)], several


def _index_and_fill(builder, module, plus: Tensor, minus: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """(index, fill, out_shape) of a module's output from its values at the positions 1..n of its
    input (`plus`) and at their negatives (`minus`): selected cells change sign, filled ones do not."""
    p, q = plus.double(), minus.double()
    selected = (p == -q) & (p >= 1) & (p == p.round())
    filled = p == q
    if not bool((selected | filled).all()):
        raise Unsupported(f"{type(module).__name__} is not a pure selection of its input")
    index = torch.where(selected, p - 1, -1).long().reshape(-1)
    fill = torch.where(filled, p, 0).reshape(-1).to(builder.dtype)
    return index, fill, tuple(p.shape)


class OnnxSplit18(split.OnnxSplit13):
    """ONNX Split at opset 18: without sizes, chunks of ceil(length / outputs), the last one smaller
    (onnx2torch's opset-13 module floors the chunk size, which drops elements of uneven axes)."""

    def forward(self, input_tensor: Tensor, split: Tensor | None = None):
        if split is not None:
            return super().forward(input_tensor, split)
        length = input_tensor.shape[self.axis]
        return torch.split(input_tensor, -(-length // self.num_splits), dim=self.axis)


@register(onnx_slice.OnnxSlice, "Slice")
@register(onnx_slice.OnnxSliceV9, "Slice")
@register(gather.OnnxGather, "Gather")
@register(gather.OnnxGatherElements, "GatherElements")
@register(gather.OnnxGatherND, "GatherND")
@register(expand.OnnxExpand, "Expand")
@register(pad.OnnxPadStatic, "Pad")
@register(pad.OnnxPadDynamic, "Pad")
@register(nn.ConstantPad1d, "Pad")
@register(nn.ConstantPad2d, "Pad")
@register(nn.ConstantPad3d, "Pad")
@register(nn.ZeroPad2d, "Pad")
@register(resize.OnnxResize, "Resize", "Upsample")
@register(resize.OnnxResizeV10, "Resize")
@register(tile.OnnxTile, "Tile")
@register(split.OnnxSplit, "Split")
@register(split.OnnxSplit13, "Split")
@register(OnnxSplit18, "Split")
@register(torch.permute)
@register(torch.transpose)
@register(torch.t)
@register(torch.Tensor.permute)
@register(torch.Tensor.transpose)
@register(torch.Tensor.t)
@register(torch.Tensor.split)
@register(torch.Tensor.chunk)
@register(torch.Tensor.flip)
@register(torch.flip)
@register(torch.Tensor.expand)
@register(torch.Tensor.repeat)
@register(torch.split)
@register(torch.chunk)
@register(F.pad)
def select_factory(builder, module, args):
    _single_variable_first(builder, module, args)
    selections, several = _selection(builder, module, args)
    outputs = [builder.add(Select(index, fill, args[0].shape, shape), [args[0]]) for index, fill, shape in selections]
    return tuple(outputs) if several else outputs[0]


@register(scatter_nd.OnnxScatterND, "ScatterND")
def scatter_nd_factory(builder, module, args):
    """ScatterND with constant indices: a selection from the data and the updates, flattened and
    concatenated (either may be constant, whose cells are then fills)."""
    data, indices, updates = args
    if builder.is_variable(indices):
        raise Unsupported("ScatterND with variable indices")
    indices = torch.as_tensor(builder.constant_value(indices)).long()
    rows = indices.reshape(-1, indices.shape[-1])
    if torch.unique(rows, dim=0).shape[0] != rows.shape[0]:
        raise Unsupported("ScatterND with repeated indices (onnxruntime's order of writes is unspecified)")
    variables = [v for v in (data, updates) if builder.is_variable(v)]
    first = 1

    def positions(value) -> Tensor | None:
        nonlocal first
        if not builder.is_variable(value):
            return None
        count = math.prod(value.shape)
        start, first = first, first + count
        return torch.arange(start, start + count, dtype=torch.float64).reshape(value.shape)

    signed = [positions(data), positions(updates)]

    def scattered(sign: float) -> Tensor:
        operands = [sign * p if p is not None else torch.as_tensor(builder.constant_value(v)).double()
                    for p, v in zip(signed, (data, updates))]
        return module(operands[0], indices, operands[1])

    index, fill, out_shape = _index_and_fill(builder, module, scattered(1.0), scattered(-1.0))
    flat = [builder.add(Reshape(v.shape, (math.prod(v.shape),)), [v]) for v in variables]
    source = flat[0] if len(flat) == 1 else builder.add(Concat(0, [f.shape for f in flat]), flat)
    return builder.add(Select(index, fill, source.shape, out_shape), [source])


@register(concat.OnnxConcat, "Concat")
def concat_factory(builder, module, args):
    return _concat(builder, args, module.axis)


@register(torch.cat)
@register(torch.concat)
def cat_function_factory(builder, function, args):
    parts, axis = (list(args) + [0])[:2]
    return _concat(builder, list(parts), axis)


def _concat(builder, args, axis: int):
    axis = axis % len(builder.shape_of(args[0]))
    parts = [a.shape if builder.is_variable(a) else builder.constant_value(a) for a in args]
    return builder.add(Concat(axis, parts), _variables(builder, args))


@register(operator.getitem)
def getitem_factory(builder, function, args):
    container, index = args
    if isinstance(container, tuple):
        return container[index]
    return select_factory(builder, function, args)  # indexing into a tensor: a slice or a selection


@register(onnx_shape.OnnxShape, "Shape")
@register(torch.Tensor.size)
@register(torch.Tensor.dim)
@register(getattr)
def shape_factory(builder, module, args):
    if module is getattr and args[1] not in ("shape", "ndim", "dtype", "device"):
        raise Unsupported(f"the attribute '{args[1]}' of a tensor")
    return builder.evaluate(module, args)  # static per-sample shapes make Shape a constant


class Cast(Rule):
    """A float-to-float Cast: the identity on the values, plus the rounding to `target` when it is
    narrower than the float it casts from (its `exec_dtype` is `target`, so the engine bounds that
    rounding, overflow to inf included); `forward` rounds through `target` as onnxruntime does."""

    preserves_box = True
    rounding_is_the_operation = True

    def __init__(self, target: torch.dtype) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: Tensor) -> Tensor:
        return x.to(self.target).to(x.dtype)

    def forward_forms(self, x, bounds: list[Interval]):
        return x  # the rounding to `target` is the engine's (this node's execution error)

    def ibp(self, x: Interval) -> Interval:
        return x

    def backward(self, coeffs, x: Interval | None = None) -> Backward:  # dense or window coefficients
        return Backward([coeffs])

    @property
    def accepts_patches(self) -> bool:
        return True


@register(nn.Sequential)
def sequential_factory(builder, module, args):
    value = args[0]
    for child in module:
        factory = factory_for(child)
        if factory is None:
            raise Unsupported(f"{type(child).__name__} inside a sequence")
        value = factory(builder, child, [value])
    return value
