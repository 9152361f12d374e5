"""The sampled soundness check catches broken rules: each mutation below must produce a violation.

Every rule family's check is shown to fail when one of its rules is deliberately broken (for
example |W| replaced by W), so a passing soundness test means something.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests import soundness
from tests.test_soundness_random import network_for
from verifier.bounds import activation, arith, bilinear, linear, logic, pool, relaxation, shape, smooth
from verifier.bounds.core import Backward, Interval
from verifier.bounds.relaxation import LinearRelaxation

# The unbroken rules, captured before any test patches them.
ORIGINAL = {
    (cls, name): getattr(cls, name)
    for cls, name in [
        (linear.Linear, "backward"), (linear.Conv, "backward"), (activation.ReLU, "relax"),
        (activation.SShaped, "relax"), (smooth.Smooth, "relax"), (pool.MaxPool2d, "backward"),
        (pool.AvgPool, "backward"), (bilinear.Multiply, "backward"), (linear.Reduce, "backward"),
        (relaxation.Elementwise, "forward_forms"), (logic.Step, "ibp"), (logic.Where, "ibp"),
        (logic.Where, "backward"),
    ]
}


def linear_ibp_signed(self, x):
    return Interval.from_center(self.forward(x.center), F.linear(x.radius, self.weight))


def linear_backward_scaled(self, coeffs, x=None):
    step = ORIGINAL[linear.Linear, "backward"](self, coeffs, x)
    return Backward([step.inputs[0] * 0.8], step.bias)


def conv_ibp_signed(self, x):
    return Interval.from_center(self.forward(x.center), self.apply(x.radius, self.weight, None))


def conv_backward_without_bias(self, coeffs, x=None):
    step = ORIGINAL[linear.Conv, "backward"](self, coeffs, x)
    return Backward(step.inputs, 0.0)


def relu_relax_flat_upper(self, lower, upper, alpha=None):
    r = ORIGINAL[activation.ReLU, "relax"](self, lower, upper, alpha)
    return LinearRelaxation(r.lower_slope, r.lower_intercept, r.upper_slope, torch.zeros_like(r.upper_intercept))


def s_shaped_swapped(self, lower, upper, alpha=None):
    r = ORIGINAL[activation.SShaped, "relax"](self, lower, upper, alpha)
    return LinearRelaxation(r.upper_slope, r.upper_intercept, r.lower_slope, r.lower_intercept)


def smooth_endpoints_only(self, lower, upper, alpha=None):
    self.critical_points = lambda slope, lower, upper: []
    try:
        return ORIGINAL[smooth.Smooth, "relax"](self, lower, upper, alpha)
    finally:
        del self.critical_points


def affine_ibp_signed(self, x):
    center, radius = self.forward(x.center), x.radius
    if self.scale is not None:
        radius = radius * self.scale
    return Interval.from_center(center, radius)


def weighted_sum_unsigned(self, *xs):
    lower = sum(abs(w) * x.lower for w, x in zip(self.weights, xs))
    upper = sum(abs(w) * x.upper for w, x in zip(self.weights, xs))
    return Interval(lower, upper)


def select_ibp_lower_only(self, x):
    return Interval(self.forward(x.lower), self.forward(x.lower))


def max_pool_upper_from_lower(self, coeffs, x=None):
    return ORIGINAL[pool.MaxPool2d, "backward"](self, coeffs, Interval(x.lower, x.lower))


def avg_pool_backward_unscaled(self, coeffs, x=None):
    step = ORIGINAL[pool.AvgPool, "backward"](self, coeffs, x)
    return Backward([step.inputs[0] * 2.0], step.bias)


def multiply_swapped_offsets(self, coeffs, x, y):
    step = ORIGINAL[bilinear.Multiply, "backward"](self, coeffs, x, y)
    return Backward(step.inputs, -step.bias)


def matmul_ibp_no_cross_term(self, x, y):
    cx, _rx, cy, ry = x.center, x.radius, y.center, y.radius
    return Interval.from_center(cx @ cy, cx.abs() @ ry)


def reduce_backward_dropped_factor(self, coeffs, x=None):
    step = ORIGINAL[linear.Reduce, "backward"](self, coeffs, x)
    return Backward([step.inputs[0] * 0.5], step.bias)


def linear_forms_unsplit(self, x, bounds):
    """Both forms through the weights as they are: a negative weight keeps the lower form low."""
    return type(x)(x.rows(self.apply(x.columns(x.lower), self.weight, None)),
                   self.apply(x.lower_bias, self.weight, self.bias),
                   x.rows(self.apply(x.columns(x.upper), self.weight, None)),
                   self.apply(x.upper_bias, self.weight, self.bias))


def elementwise_forms_without_intercepts(self, x, bounds):
    forms = ORIGINAL[relaxation.Elementwise, "forward_forms"](self, x, bounds=bounds)
    lines = self.relax(bounds[0].lower, bounds[0].upper)
    return type(x)(forms.lower, forms.lower_bias - lines.lower_intercept, forms.upper,
                   forms.upper_bias - lines.upper_intercept)


def step_ibp_at_centre(self, x):
    value = self.forward(x.center)
    return Interval(value, value)


def where_ibp_true_branch_when_open(self, *inputs):
    cond, a, b = self._intervals(inputs)
    open_ = (cond.lower < 0.5) & (cond.upper > 0.5)
    hull = ORIGINAL[logic.Where, "ibp"](self, *inputs)
    return Interval(torch.where(open_, a.lower, hull.lower), torch.where(open_, a.upper, hull.upper))


def where_backward_without_bias(self, coeffs, *inputs):
    step = ORIGINAL[logic.Where, "backward"](self, coeffs, *inputs)
    return Backward(step.inputs, 0.0)


MUTATIONS = [
    ("dense", "ibp", linear.Linear, "ibp", linear_ibp_signed),
    ("dense", "crown", linear.Linear, "backward", linear_backward_scaled),
    ("dense", "crown", activation.ReLU, "relax", relu_relax_flat_upper),
    ("dense", "crown", activation.SShaped, "relax", s_shaped_swapped),
    ("dense", "ibp", arith.Affine, "ibp", affine_ibp_signed),
    ("dense", "ibp", arith.WeightedSum, "ibp", weighted_sum_unsigned),
    ("conv", "ibp", linear.Conv, "ibp", conv_ibp_signed),
    ("conv", "crown", linear.Conv, "backward", conv_backward_without_bias),
    ("conv", "crown", pool.MaxPool2d, "backward", max_pool_upper_from_lower),
    ("conv", "crown", pool.AvgPool, "backward", avg_pool_backward_unscaled),
    ("shape", "ibp", shape.Select, "ibp", select_ibp_lower_only),
    ("products", "crown", bilinear.Multiply, "backward", multiply_swapped_offsets),
    ("products", "ibp", bilinear.MatMulVariables, "ibp", matmul_ibp_no_cross_term),
    ("products", "crown", smooth.Smooth, "relax", smooth_endpoints_only),
    ("products", "crown", linear.Reduce, "backward", reduce_backward_dropped_factor),
    ("dense", "forward", linear.Linear, "forward_forms", linear_forms_unsplit),
    ("dense", "forward", relaxation.Elementwise, "forward_forms", elementwise_forms_without_intercepts),
    ("logic", "ibp", logic.Step, "ibp", step_ibp_at_centre),
    ("logic", "ibp", logic.Where, "ibp", where_ibp_true_branch_when_open),
    ("logic", "crown", logic.Where, "backward", where_backward_without_bias),
]


@pytest.mark.parametrize("family,method,rule,name,broken", MUTATIONS,
                         ids=[f"{m[2].__name__}.{m[3]}" for m in MUTATIONS])
def test_broken_rule_is_caught(monkeypatch, family, method, rule, name, broken):
    monkeypatch.setattr(rule, name, broken)
    found = []
    for seed in range(6):
        found += soundness.check(network_for(family, seed), method, seed=seed)
        if found:
            break
    assert found, f"breaking {rule.__name__}.{name} went unnoticed"
