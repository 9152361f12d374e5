"""Sampled soundness of IBP and CROWN on every shared competition model, at every node.

The box is the first input box of a property of the model (as in the instances CSV); the
check runs in float64, so that any rule error shows up above rounding noise.
"""

from __future__ import annotations

import pytest
import torch

from tests import soundness
from tests.conftest import (
    MISSING_SHARED,
    bounded_opcoverage_pairs,
    float64_first_box,
    model_pairs,
    shared_or_skip,
    skipped_if_empty,
)
from verifier.bounds.core import Interval


def _check_model(model_path, prop_path, method: str, shrink: float = 1.0) -> list[str]:
    network, _, box = float64_first_box(model_path, prop_path, shrink)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bounds, slacks = soundness.node_bounds(network, box, method, rows_per_node=12, generator=generator)
    # Points keep a relative 1e-6 of the width away from the faces: the nn4sys learned indexes put a
    # 1e10-slope step exactly on the box's faces, where float64 rounding of the concrete forward pass
    # (values near 1e16) flips the step; inside the box their evaluation is stable.
    inset = 1e-6 * (box.upper - box.lower)
    inner = Interval(box.lower + inset, box.upper - inset)
    points = soundness.sample_points(network, inner, generator, uniform=24, corners=12, pushed_nodes=3, steps=8)
    return soundness.violations(network, bounds, slacks, points, 1e-9)


@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("model_path,prop_path", skipped_if_empty(model_pairs(shared_or_skip), MISSING_SHARED),
                         ids=lambda value: getattr(value, "name", str(value)))
def test_competition_model_bounds_contain_sampled_values(model_path, prop_path, method):
    assert _check_model(model_path, prop_path, method) == []


@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("model_path,prop_path", skipped_if_empty(bounded_opcoverage_pairs(), MISSING_SHARED),
                         ids=lambda value: getattr(value, "name", str(value)))
def test_opcoverage_model_bounds_contain_sampled_values(model_path, prop_path, method):
    # A twentieth of the property's box: CROWN on the cGAN generators (27k unstable ReLUs behind
    # upsampling) takes a minute in float64, while a smaller box exercises the same rules.
    assert _check_model(model_path, prop_path, method, shrink=0.05) == []
