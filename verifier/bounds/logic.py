"""Comparisons, casts to integers and booleans, ArgMax/ArgMin, OneHot, and Where: piecewise-constant
functions and selection.

Booleans and integers live in the engine as floats (0/1, whole numbers). A piecewise-constant
function of one variable is bounded by constant lines: its least and greatest values over the
input's interval, which is exact where the interval lies on one piece. Comparisons of two
operands compare their difference with 0 (`arith.binary` builds it). Where(c, a, b) passes
each output's coefficients to `a` where c is surely true, to `b` where surely false, and uses
the hull of both intervals where the condition is open. ArgMax and OneHot are bounded by the
indices they can take, and constant lines.
"""

from __future__ import annotations

import math

import torch
from onnx2torch.node_converters import cast
from onnx2torch.node_converters.arg_extrema import OnnxArgExtremum, OnnxArgExtremumOld
from onnx2torch.node_converters.comparisons import OnnxCompare
from onnx2torch.node_converters.where import OnnxWhere
from torch import Tensor

from verifier.bounds.arith import WeightedSum, binary
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
from verifier.bounds.shape import Cast, Select, align_rank


class Step(Rule):
    """A piecewise-constant function of one variable x: a comparison with a constant threshold t
    (`kind` 'greater' x > t, 'greater_equal', 'less', 'less_equal', 'equal', 'not_equal'; a Cast to
    bool is x != 0) or 'truncate' (towards 0: a Cast to an integer type, t unused)."""

    needs_bounds = True
    exact = True  # onnxruntime computes these exactly from the same operand

    def __init__(self, kind: str, threshold: Tensor | None = None, limits: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("threshold", threshold)
        # for 'truncate': the target type's least and greatest values; a float outside
        # (least - 1, greatest + 1) casts to an unspecified value of the type (C++ leaves it
        # undefined), so there the bounds are the type's whole range
        self.limits = limits

    def on_integers(self) -> str:
        return "exact"

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "truncate":
            return torch.trunc(x)
        t = self.threshold
        tests = {"greater": x > t, "greater_equal": x >= t, "less": x < t, "less_equal": x <= t,
                 "equal": x == t, "not_equal": x != t}
        return tests[self.kind].to(x.dtype)

    def ibp(self, x: Interval) -> Interval:
        low, high = x.lower, x.upper
        if self.kind == "truncate":
            least, greatest = self.limits
            inside = (low > least - 1) & (high < greatest + 1)  # NaN bounds are not inside
            return Interval(torch.where(inside, torch.trunc(low), least),
                            torch.where(inside, torch.trunc(high), greatest))
        if self.kind in ("greater", "greater_equal"):  # nondecreasing in x
            return Interval(self.forward(low), self.forward(high))
        if self.kind in ("less", "less_equal"):  # nonincreasing
            return Interval(self.forward(high), self.forward(low))
        t = self.threshold
        holds = ((low <= t) & (high >= t)).to(low.dtype)  # t in [low, high]
        only = ((low == t) & (high == t)).to(low.dtype)  # the interval is t alone
        if self.kind == "equal":
            return Interval(only, holds)
        return Interval(1 - holds, 1 - only)

    def backward(self, coeffs: Tensor, x: Interval) -> Backward:
        return Backward([None], constant_lines(coeffs, self.ibp(x)))


def constant_lines(coeffs: Tensor, image: Interval) -> Tensor:
    """[B, m]: the least value of each row `coeffs` [B, m, *shape] over the box `image`."""
    positive, negative = coeffs.clamp(min=0), coeffs.clamp(max=0)
    # a zero coefficient takes nothing, even from an infinite bound (0 * inf would be NaN)
    low = torch.where(positive == 0, 0.0, positive * image.lower.unsqueeze(1))
    high = torch.where(negative == 0, 0.0, negative * image.upper.unsqueeze(1))
    return row_sum(low + high)


_COMPARISONS = {torch.greater: "greater", torch.less: "less", torch.greater_equal: "greater_equal",
                torch.less_equal: "less_equal", torch.eq: "equal"}
# the comparison with its operands swapped: c < x is x > c
_SWAPPED = {"greater": "less", "less": "greater", "greater_equal": "less_equal", "less_equal": "greater_equal",
            "equal": "equal"}


@register(OnnxCompare, "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal")
def compare_factory(builder, module, args):
    """A variable against a constant directly; two variables by the sign of their difference,
    which floating-point subtraction keeps exactly (x - y rounds to 0 only when x == y)."""
    if module.compare_function not in _COMPARISONS:
        raise Unsupported(f"the comparison {module.compare_function.__name__}")
    kind = _COMPARISONS[module.compare_function]
    first, second = args
    if builder.is_variable(first) and builder.is_variable(second):
        first, second = binary(builder, "sub", first, second), torch.zeros(())
    elif not builder.is_variable(first):
        first, second, kind = second, first, _SWAPPED[kind]
    return builder.add(Step(kind, _threshold(builder, first, second)), [first])


def _threshold(builder, x, constant) -> Tensor:
    """The constant as a float tensor of at most x's rank (it broadcasts against [B, *x.shape])."""
    tensor = torch.as_tensor(constant).to(builder.dtype)
    while tensor.dim() > len(x.shape) and tensor.shape[0] == 1:
        tensor = tensor[0]
    try:
        fits = tensor.dim() <= len(x.shape) and broadcast_shape(tensor.shape, x.shape) == torch.Size(x.shape)
    except ValueError:
        fits = False
    if not fits:
        raise Unsupported("a comparison whose constant operand is larger than its variable one")
    return tensor


def cast_to_integer(builder, value, target: torch.dtype):
    """A Cast of a variable to bool (x != 0) or to an integer type (truncation towards 0)."""
    if target == torch.bool:
        return builder.add(Step("not_equal", torch.zeros((), dtype=builder.dtype)), [value])
    info = torch.iinfo(target)
    return builder.add(Step("truncate", limits=(float(info.min), float(info.max))), [value])


class Where(Rule):
    """Where(c, a, b) with c in {0, 1}: `constants` holds the constant operands (broadcast to
    `shape`) and None for each variable one, which the rule takes as inputs in that order."""

    needs_bounds = True
    exact = True

    def __init__(self, shape: tuple[int, ...], constants: list[Tensor | None]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.variable = [c is None for c in constants]
        for name, constant in zip(("cond", "when_true", "when_false"), constants):
            self.register_buffer(name, constant)

    def on_integers(self) -> str:
        return "exact"

    def _operands(self, inputs: list) -> list:
        given = iter(inputs)
        constants = (self.cond, self.when_true, self.when_false)
        return [next(given) if variable else constant for variable, constant in zip(self.variable, constants)]

    def forward(self, *inputs: Tensor) -> Tensor:
        cond, a, b = self._operands(list(inputs))
        return torch.where(cond > 0.5, a, b).expand(inputs[0].shape[0], *self.shape)

    def _intervals(self, inputs: tuple[Interval, ...]) -> list[Interval]:
        operands = self._operands(list(inputs))
        return [x if isinstance(x, Interval) else Interval.point(x.unsqueeze(0)) for x in operands]

    def ibp(self, *inputs: Interval) -> Interval:
        cond, a, b = self._intervals(inputs)
        sure, never = cond.lower > 0.5, cond.upper < 0.5
        lower = torch.where(sure, a.lower, torch.where(never, b.lower, torch.minimum(a.lower, b.lower)))
        upper = torch.where(sure, a.upper, torch.where(never, b.upper, torch.maximum(a.upper, b.upper)))
        batch = max(x.lower.shape[0] for x in (cond, a, b))
        return Interval(lower.expand(batch, *self.shape), upper.expand(batch, *self.shape))

    def backward(self, coeffs: Tensor, *inputs: Interval) -> Backward:
        cond, a, b = self._intervals(inputs)
        sure = (cond.lower > 0.5).unsqueeze(1)
        never = (cond.upper < 0.5).unsqueeze(1)
        open_ = ~(sure | never)
        hull = self.ibp(*inputs)
        bias = constant_lines(torch.where(open_, coeffs, 0.0), hull)
        results = [None] if self.variable[0] else []  # the condition only picks: nothing to it
        for slot, decided, operand in ((1, sure, a), (2, never, b)):
            chosen = torch.where(decided, coeffs, 0.0)
            if self.variable[slot]:
                results.append(sum_to_shape(chosen, tuple(operand.lower.shape[1:])))
            else:
                bias = bias + row_sum(chosen * operand.lower.unsqueeze(1))
        return Backward(results, bias)


@register(OnnxWhere, "Where")
def where_factory(builder, module, args):
    shape = broadcast_shape(*(builder.shape_of(a) for a in args))
    constants, variables = [], []
    for value in args:
        if builder.is_variable(value):
            constants.append(None)
            variables.append(align_rank(builder, value, len(shape)))
        else:
            constants.append(torch.broadcast_to(torch.as_tensor(value).to(builder.dtype), shape).contiguous())
    return builder.add(Where(tuple(shape), constants), variables)


@register(cast.OnnxCast, "Cast")
def cast_factory(builder, module, args):
    if not module.torch_dtype.is_floating_point:
        return cast_to_integer(builder, args[0], module.torch_dtype)
    target, source = torch.finfo(module.torch_dtype), torch.finfo(builder.exec_dtype_of(args[0]))
    if target.eps <= source.eps and target.max >= source.max:
        return args[0]  # to a type at least as wide: exact
    return builder.add(Cast(module.torch_dtype), [args[0]])


# Up to this many elements along the axis, ArgMax and ArgMin are bounded from the pairwise
# differences (n (n - 1) / 2 values per position), else from the elements' own intervals.
PAIRWISE_ARG_LIMIT = 16


class ArgExtremum(Rule):
    """ONNX ArgMax or ArgMin along `axis` (of the per-sample shape), as a float index, from the
    `n (n - 1) / 2` differences d_ij = s (x_i - x_j), i < j, along that axis (s = 1 for ArgMax,
    -1 for ArgMin), in the order of `pairs`; with `pairs` None, from the elements x themselves
    (s x when `largest` is False).

    i is the first extremum when d_ij >= 0 for every j > i and d_ji < 0 for every j < i (the last
    one with `last`: > 0 and <= 0). The sign of a floating-point difference is exact, so these
    tests on d give onnxruntime's index, ties included. Element i can be the extremum only where
    every upper(x_i - x_j) >= 0; the index lies between the first and the last such element. On the
    differences themselves, bounded by CROWN where the engine refines, that is much tighter than
    comparing the elements' separate intervals.
    """

    needs_bounds = True
    exact = True

    def __init__(self, axis: int, keepdims: bool, largest: bool, last: bool, n: int,
                 pairs: list[tuple[int, int]] | None) -> None:
        super().__init__()
        self.axis, self.keepdims, self.largest, self.last, self.n, self.pairs = axis, keepdims, largest, last, n, pairs

    def on_integers(self) -> str:
        return "exact"

    def _dim(self, x: Tensor) -> int:
        return self.axis + 1 if self.axis >= 0 else x.dim() + self.axis

    def _indexed(self, mask: Tensor, dim: int, last: bool) -> Tensor:
        """The first (or the last) index where `mask` [..., n at dim, ...] holds."""
        shape = [1] * mask.dim()
        shape[dim] = self.n
        positions = torch.arange(self.n, dtype=torch.float64, device=mask.device).reshape(shape)
        if last:
            return torch.where(mask, positions, -1.0).amax(dim, keepdim=self.keepdims)
        return torch.where(mask, positions, float(self.n)).amin(dim, keepdim=self.keepdims)

    def forward(self, x: Tensor) -> Tensor:
        dim = self._dim(x)
        if self.pairs is None:
            data = x if self.largest else -x
            data = torch.flip(data, [dim]) if self.last else data
            index = torch.argmax(data, dim, keepdim=self.keepdims)
            return (x.shape[dim] - 1 - index if self.last else index).to(x.dtype)
        wins = self._conditions(x, x, dim, exact=True)
        return self._indexed(wins, dim, self.last).to(x.dtype)

    def _conditions(self, lower: Tensor, upper: Tensor, dim: int, exact: bool) -> Tensor:
        """[..., n, ...] bool: with `exact` (lower = upper = d), where i is the chosen extremum;
        otherwise where it may be (every upper(x_i - x_j) >= 0)."""
        holds = [torch.ones_like(lower.select(dim, 0), dtype=torch.bool) for _ in range(self.n)]
        for k, (i, j) in enumerate(self.pairs):
            low, high = lower.select(dim, k), upper.select(dim, k)
            if exact:
                ahead = (high > 0) if self.last else (high >= 0)    # x_i against a later x_j
                behind = (low <= 0) if self.last else (low < 0)    # x_j against an earlier x_i
            else:
                ahead = (high >= 0) | torch.isnan(high)
                behind = (low <= 0) | torch.isnan(low)
            holds[i] = holds[i] & ahead
            holds[j] = holds[j] & behind
        return torch.stack(holds, dim)

    def ibp(self, x: Interval) -> Interval:
        dim = self._dim(x.lower)
        if self.pairs is not None:
            possible = self._conditions(x.lower, x.upper, dim, exact=False)
        elif self.largest:
            possible = (x.upper >= x.lower.amax(dim, keepdim=True)) | torch.isnan(x.lower) | torch.isnan(x.upper)
        else:
            possible = (x.lower <= x.upper.amin(dim, keepdim=True)) | torch.isnan(x.lower) | torch.isnan(x.upper)
        low, high = self._indexed(possible, dim, last=False), self._indexed(possible, dim, last=True)
        return Interval(low.to(x.lower.dtype), high.to(x.lower.dtype))

    def backward(self, coeffs: Tensor, x: Interval) -> Backward:
        return Backward([None], constant_lines(coeffs, self.ibp(x)))


@register(OnnxArgExtremum, "ArgMax", "ArgMin")
@register(OnnxArgExtremumOld, "ArgMax", "ArgMin")
def arg_extremum_factory(builder, module, args):
    x = args[0]
    largest = module.extremum_function is torch.argmax
    last = bool(getattr(module, "select_last_index", False))
    axis = int(module.axis) % len(x.shape)
    n = x.shape[axis]
    if n > PAIRWISE_ARG_LIMIT:
        return builder.add(ArgExtremum(axis, bool(module.keepdims), largest, last, n, None), [x])
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if not pairs:  # one element: the index is 0 everywhere
        shape = list(x.shape)
        if module.keepdims:
            shape[axis] = 1
        else:
            del shape[axis]
        return torch.zeros(shape, dtype=builder.dtype)
    positions = torch.arange(math.prod(x.shape)).reshape(x.shape)
    out_shape = list(x.shape)
    out_shape[axis] = len(pairs)

    def along(indices: list[int]):
        index = positions.index_select(axis, torch.tensor(indices)).reshape(-1)
        return builder.add(Select(index, torch.zeros(index.numel()), x.shape, tuple(out_shape)), [x])

    first, second = along([i for i, _ in pairs]), along([j for _, j in pairs])
    sign = 1.0 if largest else -1.0
    differences = builder.add(WeightedSum((sign, -sign), [first.shape, second.shape]), [first, second])
    return builder.add(ArgExtremum(axis, bool(module.keepdims), largest, last, n, pairs), [differences])


class OnnxOneHot(torch.nn.Module):
    """ONNX OneHot (onnx2torch has no converter; the loader registers one that makes this):
    `values[1]` where the new `axis` equals the index (negative indices count from `depth`),
    `values[0]` elsewhere; indices outside [-depth, depth) give `values[0]` everywhere."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, indices: Tensor, depth: Tensor, values: Tensor) -> Tensor:
        out = one_hot_last(indices, int(depth.reshape(-1)[0]), values)
        axis = self.axis if self.axis >= 0 else out.dim() + self.axis
        return out if axis == out.dim() - 1 else torch.movedim(out, -1, axis)


def one_hot_last(indices: Tensor, size: int, values: Tensor) -> Tensor:
    """OneHot along a new last axis of `size` (indices truncated to whole numbers)."""
    index = torch.trunc(indices.double()) if indices.is_floating_point() else indices.long()
    index = torch.where(index < 0, index + size, index)
    hot = (index.unsqueeze(-1) == torch.arange(size, device=indices.device)).to(values.dtype)
    return values[0] + (values[1] - values[0]) * hot


class OneHot(Rule):
    """OnnxOneHot of a variable index (whole numbers as floats), with constant depth and values."""

    needs_bounds = True
    exact = True

    def __init__(self, axis: int, depth: int, values: Tensor) -> None:
        super().__init__()
        self.axis, self.depth = axis, depth
        self.register_buffer("values", values)

    def on_integers(self) -> str:
        return "exact"

    def _axis(self, x: Tensor) -> int:
        """The new axis's position in the batched output (rank x.dim() + 1)."""
        return self.axis + 1 if self.axis >= 0 else x.dim() + 1 + self.axis

    def _placed(self, last: Tensor, x: Tensor) -> Tensor:
        axis = self._axis(x)
        return last if axis == last.dim() - 1 else torch.movedim(last, -1, axis)

    def forward(self, x: Tensor) -> Tensor:
        return self._placed(one_hot_last(x, self.depth, self.values), x)

    def ibp(self, x: Interval) -> Interval:
        low, high = torch.trunc(x.lower).unsqueeze(-1), torch.trunc(x.upper).unsqueeze(-1)
        positions = torch.arange(self.depth, dtype=x.lower.dtype, device=x.lower.device)
        # the index can be k, or k - depth (a negative index), somewhere in [low, high]
        can_be_on = ((low <= positions) & (high >= positions)) | \
            ((low <= positions - self.depth) & (high >= positions - self.depth))
        only = (low == high) & ((low == positions) | (low == positions - self.depth))
        off, on = self.values[0], self.values[1]
        can_be_off = ~only
        lower = torch.minimum(torch.where(can_be_on, on, off), torch.where(can_be_off, off, on))
        upper = torch.maximum(torch.where(can_be_on, on, off), torch.where(can_be_off, off, on))
        unknown = torch.isnan(low) | torch.isnan(high)  # NaN bounds: either value
        lower = torch.where(unknown, torch.minimum(on, off), lower)
        upper = torch.where(unknown, torch.maximum(on, off), upper)
        return Interval(self._placed(lower, x.lower), self._placed(upper, x.lower))

    def backward(self, coeffs: Tensor, x: Interval) -> Backward:
        return Backward([None], constant_lines(coeffs, self.ibp(x)))


@register(OnnxOneHot, "OneHot")
def one_hot_factory(builder, module, args):
    indices, depth, values = args
    if builder.is_variable(depth) or builder.is_variable(values):
        raise Unsupported("OneHot with a variable depth or values")
    depth = int(torch.as_tensor(depth).reshape(-1)[0])
    return builder.add(OneHot(module.axis, depth, torch.as_tensor(values).to(builder.dtype).reshape(2)), [indices])
