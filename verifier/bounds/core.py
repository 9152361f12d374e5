"""What every operator rule provides, and the table that maps converted modules to rules.

Shapes: every tensor the engine hands to a rule has a leading *batch* axis B (one entry per input
box) in front of the node's per-sample shape (the shape the ONNX model itself gives that value,
its own batch axis of size 1 included). Linear coefficient tensors have shape [B, m, *shape]: m
rows, each one linear function whose lower bound is wanted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class Interval:
    """Element-wise bounds `lower <= value <= upper`, each of shape [B, *shape]."""

    lower: Tensor
    upper: Tensor

    @property
    def center(self) -> Tensor:
        return (self.upper + self.lower) / 2

    @property
    def radius(self) -> Tensor:
        return (self.upper - self.lower) / 2

    @staticmethod
    def point(value: Tensor) -> Interval:
        return Interval(value, value)

    @staticmethod
    def from_center(center: Tensor, radius: Tensor, magnitude: Tensor | None = None, terms: int = 0) -> Interval:
        """`center ± radius`, widened by the rounding error of sums of `terms` values of size `magnitude`.

        Interval arithmetic in floating point is only sound with that allowance: a network that
        cancels values of 1e16 down to 1 (the nn4sys learned indexes do) loses more than the
        interval's width to rounding otherwise.
        """
        if magnitude is not None:
            radius = radius + rounding(center.dtype, terms) * magnitude
        return Interval(center - radius, center + radius)

    def intersect(self, other: Interval) -> Interval:
        return Interval(torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper))


@dataclass
class BallPart:
    """An Lp ball (p = 1 or 2) on some coordinates of the flattened per-sample input:
    `||x[index] - point||_p <= eps`; `index` [k] long, `point` [B, k], `eps` [B]."""

    index: Tensor
    point: Tensor
    eps: Tensor
    norm: int

    @property
    def dual_norm(self) -> float:
        return 2.0 if self.norm == 2 else float("inf")


class Ball(Interval):
    """An input region: Lp balls on groups of coordinates (`parts`), a box on the others.

    Its interval (`lower`, `upper`) [B, *shape] is the region's bounding box, which is what IBP
    and the relaxations see; linear functions of the input are concretised over the balls
    themselves with the dual norm (see engine.concretize_input).
    """

    def __init__(self, lower: Tensor, upper: Tensor, parts: list[BallPart]) -> None:
        super().__init__(lower, upper)
        self.parts = parts

    @staticmethod
    def around(point: Tensor, eps: Tensor | float, norm: int) -> Ball:
        """The ball `||x - point||_norm <= eps` of each batch entry (point [B, *shape], eps [B] or a float)."""
        if norm not in (1, 2):
            raise ValueError(f"norm {norm}: a ball is an L1 or L2 ball (an L-inf ball is a box)")
        batch = point.shape[0]
        radius = torch.as_tensor(eps, dtype=point.dtype, device=point.device).reshape(-1).expand(batch)
        spread = radius.reshape(-1, *(1,) * (point.dim() - 1))
        index = torch.arange(point[0].numel(), device=point.device)
        return Ball(point - spread, point + spread, [BallPart(index, point.reshape(batch, -1), radius, norm)])


def lp_ball(point: Tensor, eps: Tensor | float, norm: float) -> Interval:
    """The Lp ball (`norm` inf, 2 or 1) of radius `eps` (a float, or [B]) around each `point`
    [B, *shape]: a box for L-inf, else a Ball."""
    if norm != float("inf"):
        return Ball.around(point, eps, int(norm))
    radius = torch.as_tensor(eps, dtype=point.dtype, device=point.device)
    radius = radius.reshape(-1, *(1,) * (point.dim() - 1)) if radius.dim() else radius
    return Interval(point - radius, point + radius)


@dataclass
class Backward:
    """Result of a backward rule: coefficients per variable input (None: no dependence) and bias [B, m]."""

    inputs: list[Tensor | None]
    bias: Tensor | float = 0.0


class Rule(nn.Module):
    """Bound rules of one operator instance; constants are buffers, variable operands are arguments.

    Subclasses implement `forward` (concrete, batched), `ibp` and, where a linear rule exists,
    `backward`. `needs_bounds` says whether `backward` uses the intervals of the inputs.
    """

    needs_bounds = False
    has_linear_rule = True
    # True for bijective layout changes (reshape, transpose): the image of a box is a box.
    preserves_box = False
    # True for single-input rules that only move or copy values (reshape, transpose, selections):
    # their interval is exactly the selection of their input's, so bounds are refined before them.
    selects_only = False
    # True when `backward` also takes window coefficients (patches.py); others get dense ones.
    accepts_patches = False
    # True for single-input elementwise rules whose input branch and bound may split (`split_point`,
    # `can_split`, `split_score`): at 0 for ReLU, which makes it exact on both sides; inside the
    # interval for sigmoid and tanh, whose lines are then tighter on each side.
    splittable = False
    # Whether a branch and bound child starts its relaxation parameters at its parent's: not where
    # the best ones depend on the interval that a split changes (sigmoid and tanh slopes: on a
    # small random sigmoid network, warm children's open gaps were 2-3x those of cold ones after
    # one split, 40x after five).
    warm_start = True
    # False where a tighter input interval can loosen the relaxation (ReLU's adaptive lower line
    # turns with u >= -l): CROWN's refined bounds of its inputs then replace IBP's instead of
    # intersecting them, as in the published algorithm, which they must never be looser than.
    tighter_input_helps = True
    # True when `backward` takes an `alpha` slot (free relaxation parameters, alpha-CROWN).
    has_alpha = False
    # How onnxruntime's result may differ from the exact operator (see `execution_error`): not at
    # all (moves, selections, ReLU, max; `exact`, which also marks a rule whose own bounds already
    # hold onnxruntime's values, as Sin and Cos do); or by the rounding of `rounding_terms` operations in
    # `exec_dtype` (the dtype of the node's output in the ONNX graph, set by the graph builder;
    # None: real arithmetic, the operator taken as exact), relative to the sum of the absolute
    # values combined, which rules that add up products (`sums_products`) get from their interval
    # rule on symmetric operands and the others from their output.
    exact = False
    sums_products = False
    rounding_terms = 1
    # True for elementary functions (exp, log, tanh, sigmoid, sin, pow), which onnxruntime computes
    # by approximations of a few ulps and clamps at large arguments (sigmoid, tanh): they are
    # allowed FUNCTION_ROUNDINGS roundings of |f| + 1.
    approximated = False
    exec_dtype: torch.dtype | None = None
    # True where the rounding to `exec_dtype` is the operation itself (a Cast to a narrower
    # float): it stays when the network is bounded in real arithmetic (Network.real_arithmetic).
    rounding_is_the_operation = False

    def ibp(self, *inputs: Interval) -> Interval:
        raise NotImplementedError

    def on_integers(self) -> str:
        """What the rule computes where the ONNX node works on integers (the graph builder refuses
        the node otherwise): 'exact' (moves, selections, comparisons: the same values), 'wraps'
        (sums with whole coefficients: the same unless the integer type overflows), or 'no' (a
        division, a product: onnxruntime's integer result differs from the real one)."""
        return "exact" if self.selects_only or self.preserves_box else "no"

    def execution_error(self, *inputs: Interval) -> Tensor | None:
        """Bound [B, *shape] on |onnxruntime's value - the exact operator's value| for operands in
        `inputs`; None when the operator is exact. Infinite where the result may overflow."""
        if self.exact or self.exec_dtype is None:
            return None
        size = self.magnitude(*inputs)
        if self.approximated:
            return execution_rounding(self.exec_dtype, FUNCTION_ROUNDINGS, size + 1)
        return execution_rounding(self.exec_dtype, self.active_terms(*inputs), size)

    def active_terms(self, *inputs: Interval) -> int | Tensor:
        """How many roundings each output may see: `rounding_terms`, or per output ([B, *shape] or
        broadcastable to it) fewer where a rule knows that some of its products are exactly 0 (an
        exact 0 product adds no rounding to a sum, in any order)."""
        return self.rounding_terms

    def magnitude(self, *inputs: Interval) -> Tensor:
        """[B, *shape]: a bound on the sum of the absolute values the operator combines (for sums
        of products, sum |w x| + |b|, from the interval rule on symmetric operands), else on |output|."""
        if self.sums_products:
            sizes = [torch.maximum(x.lower.abs(), x.upper.abs()) for x in inputs]
            image = self.ibp(*(Interval(-size, size) for size in sizes))
        else:
            image = self.ibp(*inputs)
        return torch.maximum(image.lower.abs(), image.upper.abs())

    def backward(self, coeffs: Tensor, *inputs: Interval | None) -> Backward:
        """Map the coefficients [B, m, *out_shape] of a lower bound to the inputs."""
        raise NotImplementedError

    # True for exact linear maps with non-negative weights, plus a constant (selections, sums,
    # pooling): forward-mode bounds map the lower and the upper forms as they are.
    monotone = False

    def forward_forms(self, *forms, bounds: list[Interval]):
        """Forward-mode linear bounds of the output (a forward.Forms) from those of the inputs
        and their intervals; None where the rule has none (its interval is used instead)."""
        if not self.monotone:
            return None
        constant = self.forward(*(torch.zeros_like(f.lower_bias[:1]) for f in forms))

        def mapped(side: str) -> Tensor:
            values = self.forward(*(f.columns(getattr(f, side)) for f in forms))
            # cells that hold a constant (a selection's fill, which may be -inf) depend on no input
            return forms[0].rows(torch.where(torch.isfinite(constant), values - constant, 0.0))

        return type(forms[0])(mapped("lower"), self.forward(*(f.lower_bias for f in forms)),
                              mapped("upper"), self.forward(*(f.upper_bias for f in forms)))

    def split_point(self, lower: Tensor, upper: Tensor) -> Tensor:
        """For a `splittable` rule: where to split each neuron of its input with these bounds."""
        raise NotImplementedError

    def can_split(self, lower: Tensor, upper: Tensor) -> Tensor:
        """For a `splittable` rule: which neurons a split would tighten (bool, like `lower`)."""
        raise NotImplementedError

    def split_score(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """For a `splittable` rule: how far its upper line lies above the function, and the
        function above its lower line, at each neuron; a split shrinks both. Branch and bound
        weighs them by what the open rows' coefficients pay for each line (a BaBSR-like score)
        to choose the neuron to split."""
        raise NotImplementedError

    def relevant(self, bounds: Interval) -> Tensor | None:
        """Which neurons of an input benefit from tighter bounds ([B, *shape] bool); None: all."""
        return None


class Unsupported(Exception):
    """A module (or a use of it) that no rule covers; the message says what."""


Factory = Callable[..., object]
_FACTORIES: dict[type, Factory] = {}
_ONNX_OPS: set[str] = set()


def register(module_type: object, *onnx_ops: str) -> Callable[[Factory], Factory]:
    """Register `factory(builder, module, args)` for a converted module type.

    `args` holds, for each operand in order, a builder value (a variable) or a constant. The
    factory adds nodes through `builder.add(rule, inputs)` and returns the value (or tuple of
    values) standing for the module's output; it raises Unsupported for uses it cannot bound.
    """

    def wrap(factory: Factory) -> Factory:
        _FACTORIES[module_type] = factory
        _ONNX_OPS.update(onnx_ops)
        return factory

    return wrap


def factory_for(module: object) -> Factory | None:
    """The factory for a module instance, or for a plain function such as operator.getitem."""
    if not isinstance(module, nn.Module) and module in _FACTORIES:
        return _FACTORIES[module]
    for cls in type(module).__mro__:
        if cls in _FACTORIES:
            return _FACTORIES[cls]
    return None


def covers_exactly(module: nn.Module) -> bool:
    """Whether a rule covers this module as it computes: its class, or a subclass that keeps the
    registered class's `forward` (a subclass with its own forward computes something else)."""
    for cls in type(module).__mro__:
        if cls in _FACTORIES:
            return type(module).forward is cls.forward
    return False


def supported_onnx_ops() -> frozenset[str]:
    return frozenset(_ONNX_OPS)


def broadcast_shape(*shapes: tuple[int, ...] | torch.Size) -> torch.Size:
    """The shape that `shapes` broadcast to (ValueError if they do not).

    numpy's, not torch.broadcast_shapes: torch's imports sympy on first use, 0.6 s of start-up."""
    return torch.Size(np.broadcast_shapes(*(tuple(shape) for shape in shapes)))


def sum_to_shape(tensor: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum a broadcast result [B, m, *bigger] back to [B, m, *shape] (the adjoint of broadcasting)."""
    lead = tensor.dim() - len(shape)
    if tuple(tensor.shape[lead:]) == tuple(shape):
        return tensor
    extra = lead - 2
    if extra > 0:
        tensor = tensor.sum(dim=tuple(range(2, 2 + extra)))
    dims = tuple(2 + i for i, (got, want) in enumerate(zip(tensor.shape[2:], shape)) if got != want and want == 1)
    if dims:
        tensor = tensor.sum(dim=dims, keepdim=True)
    return tensor


# Rounding allowance of one backward sweep (or one proof), in sums of this many terms.
SWEEP_TERMS = 2048
# Roundings allowed to an elementary function as onnxruntime computes it (its approximations
# are within a few ulps; tests/test_execution_error.py measures them on a grid of every exponent).
FUNCTION_ROUNDINGS = 16


def rounding(dtype: torch.dtype, terms: int) -> float:
    """Relative bound on the rounding error of a sum of `terms` products in `dtype`.

    A floating-point dot product of n terms errs by at most gamma_n = n u / (1 - n u) times the
    sum of the absolute terms (u the unit roundoff, eps / 2); (n + 2) eps is that bound with a
    factor 2 to spare, plus two more roundings (the bias, the centre +- radius).
    """
    return (terms + 2) * torch.finfo(dtype).eps


def execution_rounding(dtype: torch.dtype, terms: int | Tensor, size: Tensor) -> Tensor:
    """Error bound of a result computed with `terms` roundings in `dtype` from values whose
    absolute terms add up to `size`: gamma_k * size with k = terms + 1 and gamma_k = k u / (1 - k u),
    u the unit roundoff (Higham, Accuracy and Stability, Thm 3.4: a dot product of n terms, in any
    order, with or without fused multiply-adds, errs by at most gamma_n times the sum of its
    absolute terms); the extra rounding covers a constant folded in by onnxruntime (a BatchNorm
    into its Conv, say). Plus the underflow of each rounding (half a subnormal step), and infinite
    where the result may pass the largest finite value (onnxruntime gives inf)."""
    info = torch.finfo(dtype)
    k = (terms + 1) * info.eps / 2
    error = k / (1 - k) * size + terms * info.smallest_normal * info.eps
    return torch.where(size * (1 + k) < info.max, error, torch.inf)


def exactly_zero(x: Interval) -> Tensor:
    """[B, *shape] bool: where the interval holds only 0 (a stably inactive ReLU's output)."""
    return (x.lower == 0) & (x.upper == 0)


def row_sum(tensor: Tensor) -> Tensor:
    """Sum a coefficient-shaped tensor [B, m, *shape] over its per-sample axes, giving [B, m]."""
    return tensor.reshape(tensor.shape[0], tensor.shape[1], -1).sum(-1)
