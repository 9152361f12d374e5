"""The shared backward rule of element-wise operators relaxed by two lines.

An element-wise operator z = f(x) declares, for input bounds [l, u], lines with
`lower_slope * x + lower_intercept <= f(x) <= upper_slope * x + upper_intercept` on [l, u]. The
lower bound of <A, z> then takes the lower line where A >= 0 and the upper line where A < 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.bounds.core import Backward, Interval, Rule, row_sum
from verifier.bounds.patches import Patches


@dataclass
class LinearRelaxation:
    """Slopes and intercepts, each [B, *shape] (shared by all rows) or [B, m, *shape] (per row)."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


def clamp_passing(x: Tensor, low: float, high: float) -> Tensor:
    """`x` clamped to [low, high], with derivative 1 on the closed interval and 0 outside, under
    every torch.

    A relaxation parameter that starts on a bound of its range (ReLU's lower slope starts at 0 or
    1) must still receive a gradient there. `Tensor.clamp` gave its bounds the subgradient 1 up to
    torch 2.13; torch 2.14 gives them the minimum-norm subgradient 0 (pytorch/pytorch#184574), which
    froze every such parameter, so alpha-CROWN silently returned CROWN's bound.
    """
    return torch.where((x >= low) & (x <= high), x, x.clamp(low, high))


def relaxed_backward(coeffs: Tensor, relaxation: LinearRelaxation) -> Backward:
    """Coefficients on the input and the bias of the lower bound of <coeffs, f(x)>.

    With A- = min(A, 0): A_x = A * lower_slope + A- * (upper_slope - lower_slope), and the bias
    is <A, lower_intercept> + <A-, upper_intercept - lower_intercept> (fewer passes over A than
    splitting it into both signs).
    """
    if isinstance(coeffs, Patches):
        return _relaxed_patches(coeffs, relaxation)
    negative = coeffs.clamp(max=0)
    slope_gap = relaxation.upper_slope - relaxation.lower_slope
    new = torch.addcmul(coeffs * _per_row(relaxation.lower_slope, coeffs), negative, _per_row(slope_gap, coeffs))
    bias = _inner(negative, relaxation.upper_intercept - relaxation.lower_intercept)
    if bool(relaxation.lower_intercept.any()):
        bias = bias + _inner(coeffs, relaxation.lower_intercept)
    return Backward([new], bias)


def _relaxed_patches(coeffs: Patches, relaxation: LinearRelaxation) -> Backward:
    """The same step on window coefficients: relaxations are maps [B, *shape] shared by all rows
    (gathered per window here) or already per-row windows shaped like the coefficients."""
    values = coeffs.values
    if relaxation.lower_slope.shape == values.shape:
        parts = (relaxation.lower_slope, relaxation.upper_slope - relaxation.lower_slope,
                 relaxation.upper_intercept - relaxation.lower_intercept, relaxation.lower_intercept)
    else:
        parts = coeffs.windows(relaxation.lower_slope, relaxation.upper_slope - relaxation.lower_slope,
                               relaxation.upper_intercept - relaxation.lower_intercept,
                               relaxation.lower_intercept)
    lower_slope, slope_gap, intercept_gap, lower_intercept = parts
    negative = values.clamp(max=0)
    new = torch.addcmul(values * lower_slope, negative, slope_gap)
    bias = (negative * intercept_gap + values * lower_intercept).sum(dim=(2, 3, 4))
    return Backward([coeffs.with_values(new)], bias)


def _per_row(tensor: Tensor, coeffs: Tensor) -> Tensor:
    return tensor.unsqueeze(1) if tensor.dim() == coeffs.dim() - 1 else tensor


def _inner(coeffs: Tensor, values: Tensor) -> Tensor:
    """<coeffs[b, r], values[b]> for every row [B, m], or with per-row values [B, m, *shape]."""
    if values.dim() == coeffs.dim():
        return row_sum(coeffs * values)
    flat = coeffs.reshape(coeffs.shape[0], coeffs.shape[1], -1)
    return torch.bmm(flat, values.reshape(values.shape[0], -1, 1)).squeeze(-1)


class AlphaStore:
    """The free relaxation parameters of every (sweep, relaxed node), owned by the optimiser.

    Parameters are shaped like the sweep's coefficients at the node (dense rows [B, m, *shape]
    or windows [B, m, C, Ph, Pw]) and made on first use; `positions` fixes which neurons each
    intermediate sweep refines, so that the shapes stay the same across iterations. A store with
    a `capacity` (bytes) stops making parameters once they would exceed it (`full`): from then on
    the rules' own lines are used, so that a pass whose parameters will not be kept costs no
    more than CROWN's.
    """

    def __init__(self, capacity: float | None = None) -> None:
        self.params: dict[tuple, list[Tensor]] = {}
        self.projections: dict[tuple, object] = {}
        self.positions: dict[int, Tensor] = {}
        self.capacity = capacity
        self.size = 0  # bytes of parameters made
        self.full = False

    def slot(self, key: tuple) -> AlphaSlot:
        return AlphaSlot(self, key)

    def parameters(self) -> list[Tensor]:
        return [p for group in self.params.values() for p in group]

    def clear(self) -> None:
        """Forget every parameter and position (their sweeps were not finished)."""
        self.params.clear()
        self.projections.clear()
        self.positions.clear()
        self.size, self.full = 0, False

    @staticmethod
    def holding(params: dict[tuple, list[Tensor]]) -> AlphaStore:
        """A store whose sweeps read `params` as they are (slot key -> tensors)."""
        store = AlphaStore()
        store.params = params
        return store

    @staticmethod
    def starting_from(params: dict[tuple, list[Tensor]]) -> AlphaStore:
        """A store whose parameters start at copies of `params` (a warm start), to be optimised."""
        return AlphaStore.holding({key: [p.detach().clone().requires_grad_(True) for p in group]
                                   for key, group in params.items()})

    def project(self) -> None:
        """Move every parameter back into its valid range (after an optimiser step)."""
        with torch.no_grad():
            for key, project in self.projections.items():
                for param, valid in zip(self.params[key], project(self.params[key])):
                    param.copy_(valid)


class AlphaSlot:
    """The parameters of one relaxed node in one sweep: what a rule's backward step reads."""

    def __init__(self, store: AlphaStore, key: tuple) -> None:
        self.store, self.key = store, key

    def values(self, init, project) -> list[Tensor]:
        """The parameters (made by `init()` on first use); `project(params)` maps them into their
        valid range, and is kept for the optimiser to apply after each step."""
        store = self.store
        if self.key not in store.params:
            start = init()
            size = sum(p.numel() * p.element_size() for p in start)
            if store.capacity is not None and store.size + size > store.capacity:
                store.full = True  # the rule's own choice, not kept: the same lines as without a store
                return [p.detach() for p in start]
            store.size += size
            store.params[self.key] = [p.detach().clone().requires_grad_(True) for p in start]
        store.projections[self.key] = project
        return store.params[self.key]


class Elementwise(Rule):
    """An element-wise operator relaxed by two lines, computed element by element from (l, u).

    Subclasses implement `relax(lower, upper, alpha)`; those with free parameters (alpha-CROWN)
    also `alpha_init` and `alpha_project`. Any parameter value must give sound lines.
    """

    needs_bounds = True
    accepts_patches = True

    def relax(self, lower: Tensor, upper: Tensor, alpha: list[Tensor] | None = None) -> LinearRelaxation:
        """Lines on [lower, upper], element by element (any broadcastable shapes)."""
        raise NotImplementedError

    def alpha_init(self, lower: Tensor, upper: Tensor) -> list[Tensor] | None:
        """Starting values of the free parameters (the rule's own choice), or None if it has none."""
        return None

    def alpha_project(self, alpha: list[Tensor], lower: Tensor, upper: Tensor) -> list[Tensor]:
        """The parameters moved back into their valid range."""
        return alpha

    @property
    def has_alpha(self) -> bool:
        return type(self).alpha_init is not Elementwise.alpha_init

    def forward_forms(self, x, bounds: list[Interval]):
        """The lines at the input's interval applied to its forms: the lower line takes the lower
        form where its slope is positive and the upper one where it is negative."""
        (interval,) = bounds
        lines = self.relax(interval.lower, interval.upper)

        def side(slope: Tensor, intercept: Tensor, main: str, other: str) -> tuple[Tensor, Tensor]:
            positive, negative = slope.clamp(min=0), slope.clamp(max=0)
            coefficients = getattr(x, main) * positive.unsqueeze(1) + getattr(x, other) * negative.unsqueeze(1)
            bias = getattr(x, main + "_bias") * positive + getattr(x, other + "_bias") * negative + intercept
            return coefficients, bias

        lower, lower_bias = side(lines.lower_slope, lines.lower_intercept, "lower", "upper")
        upper, upper_bias = side(lines.upper_slope, lines.upper_intercept, "upper", "lower")
        return type(x)(lower, lower_bias, upper, upper_bias)

    def backward(self, coeffs: Tensor | Patches, x: Interval | None = None, alpha: AlphaSlot | None = None) -> Backward:
        if alpha is not None and self.has_alpha:
            return self._backward_with_alpha(coeffs, x, alpha)
        # The same input bounds are crossed by many backward sweeps: relax them once.
        cached = self.__dict__.get("_relaxed")
        if cached is None or cached[0] is not x:
            cached = (x, self.relax(x.lower, x.upper))
            self.__dict__["_relaxed"] = cached
        return relaxed_backward(coeffs, cached[1])

    def _backward_with_alpha(self, coeffs: Tensor | Patches, x: Interval, alpha: AlphaSlot) -> Backward:
        if isinstance(coeffs, Patches):
            coeffs = coeffs.with_values(coeffs.values * coeffs.inside())  # padding cells carry nothing
            lower, upper = coeffs.windows(x.lower, x.upper)
            shape = coeffs.values.shape
        else:
            lower, upper = x.lower.unsqueeze(1), x.upper.unsqueeze(1)
            shape = coeffs.shape
        lower, upper = lower.expand(shape), upper.expand(shape)
        fixed_lower, fixed_upper = lower.detach(), upper.detach()
        params = alpha.values(lambda: self.alpha_init(fixed_lower, fixed_upper),
                              lambda p: self.alpha_project(p, fixed_lower, fixed_upper))
        return relaxed_backward(coeffs, self.relax(lower, upper, params))


def extremum_intercepts(
    f, slope: Tensor, lower: Tensor, upper: Tensor, critical: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """Min and max of `f(x) - slope * x` on [lower, upper], given every critical point candidate.

    The extremum of a differentiable function on an interval is at an end or at a critical point
    (where f'(x) = slope); `critical` lists the candidates (NaN where there is none), which are
    ignored outside [lower, upper]. A small outward slack covers the rounding of this evaluation,
    sized by the values at each candidate itself: exp on [-20, 20] has the lower end 2e-9 and the
    upper 5e8, and one slack for both took the lower end to -462.
    """
    eps = torch.finfo(slope.dtype).eps
    lows, highs = [], []
    for point in [lower, upper] + critical:
        inside = (point >= lower) & (point <= upper)
        safe = torch.where(inside, point, lower)
        product = slope * safe
        value = f(safe) - product
        slack = 8 * eps * (1 + product.abs() + value.abs())
        # an infinite value (an overflow) leaves that side unbounded
        lows.append(torch.where(inside, (value - slack).nan_to_num(nan=-torch.inf), torch.inf))
        highs.append(torch.where(inside, (value + slack).nan_to_num(nan=torch.inf), -torch.inf))
    return torch.stack(lows).amin(0), torch.stack(highs).amax(0)
