"""Forward-mode linear bounds: every node bounded by linear functions of the input, in one sweep.

Node z gets `lower . x + lower_bias <= z <= upper . x + upper_bias` over the flat input x, found
from its inputs' forms by its rule (`Rule.forward_forms`): linear maps split their coefficients by
sign, monotone ones (selections, sums, pooling) map both forms as they are, and element-wise
relaxations take their lines at the input's interval. A rule without a forward form gives its
interval as constant forms. Each node's interval is its forms concretised over the input region,
intersected with IBP's, so that relaxations downstream see the tighter one. The cost grows with
the number of inputs (the forms hold one coefficient per input and neuron), not with the number
of output rows: the shape of problems with few inputs and large networks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.bounds.core import SWEEP_TERMS, Interval, rounding
from verifier.bounds.engine import Errors, LinearBound, check_time, concretize_input, execution_error, node_interval
from verifier.bounds.network import Network


@dataclass
class Forms:
    """Linear bounds of a node over the flat input x [B, n]: coefficients [B, n, *shape], biases
    [B, *shape]."""

    lower: Tensor
    lower_bias: Tensor
    upper: Tensor
    upper_bias: Tensor

    @staticmethod
    def constant(bounds: Interval, inputs: int) -> Forms:
        zero = bounds.lower.new_zeros(bounds.lower.shape[0], inputs, *bounds.lower.shape[1:])
        return Forms(zero, bounds.lower, zero, bounds.upper)

    @staticmethod
    def identity(region: Interval) -> Forms:
        batch, shape = region.lower.shape[0], region.lower.shape[1:]
        count = region.lower[0].numel()
        eye = torch.eye(count, dtype=region.lower.dtype, device=region.lower.device)
        eye = eye.expand(batch, count, count).reshape(batch, count, *shape)
        zero = torch.zeros_like(region.lower)
        return Forms(eye, zero, eye, zero)

    @property
    def inputs(self) -> int:
        return self.lower.shape[1]

    def columns(self, coefficients: Tensor) -> Tensor:
        """The coefficients as a batch of values [B * n, *shape], for a rule's own maps."""
        return coefficients.reshape(-1, *coefficients.shape[2:])

    def rows(self, values: Tensor) -> Tensor:
        """A batch of mapped columns [B * n, *shape] back as coefficients [B, n, *shape]."""
        return values.reshape(self.lower.shape[0], self.inputs, *values.shape[1:])

    def widened(self, error: Tensor | None) -> Forms:
        """Outwards by `error` [B, *shape] (the deployed model's rounding)."""
        if error is None:
            return self
        return Forms(self.lower, self.lower_bias - error, self.upper, self.upper_bias + error)


@dataclass
class ForwardBounds:
    intervals: list[Interval]  # every node's interval
    forms: list[Forms | None]  # every node's linear bounds (None: dropped)


def forward_bounds(network: Network, region: Interval, time_left: Callable[[], float] | None = None,
                   keep_forms: bool = True) -> ForwardBounds:
    """Forms and intervals of every node over the input regions (boxes or balls), [B, *input_shape].
    Without `keep_forms` a node's forms are dropped (None) once its last consumer has them: the
    forms of a large network take gigabytes, its intervals a few hundred times less."""
    forms: list[Forms | None] = [Forms.identity(region)]
    intervals = [region]
    errors: Errors = {}
    waiting = [len(consumers) for consumers in network.consumers]
    for index, node in enumerate(network.nodes[1:], start=1):
        check_time(time_left)
        rule = network.rules[node.rule]
        inputs = [intervals[i] for i in node.inputs]
        ibp = node_interval(network, index, intervals, errors)
        current = rule.forward_forms(*(forms[i] for i in node.inputs), bounds=inputs)
        if current is None:
            current = Forms.constant(ibp, forms[0].inputs)
        else:
            current = current.widened(execution_error(network, index, intervals, errors))
        forms.append(current)
        intervals.append(concretize_forms(current, region).intersect(ibp))
        if not keep_forms:
            for source in node.inputs:
                waiting[source] -= 1
                if waiting[source] == 0 and source not in (0, network.output):
                    forms[source] = None
    return ForwardBounds(intervals, forms)


def concretize_forms(forms: Forms, region: Interval) -> Interval:
    """The interval [B, *shape] of a node's forms over the region, sound in floating point."""
    batch, shape = forms.lower_bias.shape[0], forms.lower_bias.shape[1:]
    lower = _lowest(forms.lower, forms.lower_bias, region)
    upper = _lowest(-forms.upper, -forms.upper_bias, region)
    return Interval(lower.reshape(batch, *shape), (-upper).reshape(batch, *shape))


def rows_bound(coeffs: Tensor, forms: Forms, region: Interval) -> LinearBound:
    """Lower bound [B, m] of <coeffs, z> (coeffs [B, m, *shape]) from z's forms: the lower form
    where a coefficient is positive, the upper one where it is negative."""
    batch, rows = coeffs.shape[:2]
    flat = coeffs.reshape(batch, rows, -1)
    positive, negative = flat.clamp(min=0), flat.clamp(max=0)
    count = forms.inputs

    def weigh(form: Tensor, weights: Tensor) -> Tensor:  # [B, m, n]
        return torch.bmm(weights, form.reshape(batch, count, -1).transpose(1, 2))

    linear = weigh(forms.lower, positive) + weigh(forms.upper, negative)
    bias = torch.bmm(positive, forms.lower_bias.reshape(batch, -1, 1)).squeeze(-1) \
        + torch.bmm(negative, forms.upper_bias.reshape(batch, -1, 1)).squeeze(-1)
    part = concretize_input(linear.reshape(batch, rows, *region.lower.shape[1:]), region)
    magnitude = part.magnitude + torch.bmm(flat.abs(), torch.maximum(forms.lower_bias.abs(), forms.upper_bias.abs())
                                           .reshape(batch, -1, 1)).squeeze(-1)
    lower = part.lower + bias
    # 0 * inf (a zero coefficient on an unbounded form) is NaN: unbounded
    return LinearBound(torch.where(torch.isnan(lower), -torch.inf, lower),
                       torch.where(torch.isnan(magnitude), torch.inf, magnitude))


def _lowest(coefficients: Tensor, bias: Tensor, region: Interval) -> Tensor:
    """Lower bound [B, numel] of coefficients . x + bias per neuron, less its rounding."""
    batch, count = coefficients.shape[:2]
    per_neuron = coefficients.reshape(batch, count, -1).transpose(1, 2)  # [B, numel, n]
    part = concretize_input(per_neuron.reshape(batch, per_neuron.shape[1], *region.lower.shape[1:]), region)
    flat_bias = bias.reshape(batch, -1)
    magnitude = part.magnitude + flat_bias.abs()
    value = part.lower + flat_bias - rounding(bias.dtype, SWEEP_TERMS) * magnitude
    return torch.where(torch.isnan(value), -torch.inf, value)
