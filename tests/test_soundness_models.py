"""Sampled soundness of IBP and CROWN on every shared competition model, at every node.

The box is the first input box of a property of the model (as in the instances CSV); the
check runs in float64, so that any rule error shows up above rounding noise.
"""

from __future__ import annotations

import pytest
import torch

from tests import soundness
from tests.conftest import MISSING_SHARED, cached_model, opcoverage_or_skip, shared_or_skip, skipped_if_empty
from tests.test_load import _first_properties
from verifier.bounds.core import Interval
from verifier.errors import ModelError
from verifier.graph import build_network
from verifier.spec import Spec
from vnnlib import parse_file


def _model_pairs(root_fn) -> list:
    try:
        root = root_fn()
    except pytest.skip.Exception:
        return []
    pairs = _first_properties(root)
    return sorted(pairs.items())


def _check_model(model_path, prop_path, method: str, shrink: float = 1.0) -> list[str]:
    model = cached_model(str(model_path))
    prop = parse_file(prop_path).padded_to_outputs(model.num_outputs)
    case = prop.cases[0]
    try:
        network = build_network(model, torch.from_numpy((case.lower + case.upper) / 2)).double()
    except ModelError as error:
        pytest.skip(f"not supported: {error}")
    spec = Spec.build(prop, network.input_shape, torch.float64)
    center, radius = spec.box.center[:1], spec.box.radius[:1] * shrink
    box = Interval(center - radius, center + radius)
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
@pytest.mark.parametrize("model_path,prop_path", skipped_if_empty(_model_pairs(shared_or_skip), MISSING_SHARED),
                         ids=lambda value: getattr(value, "name", str(value)))
def test_competition_model_bounds_contain_sampled_values(model_path, prop_path, method):
    assert _check_model(model_path, prop_path, method) == []


@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("model_path,prop_path", skipped_if_empty(_model_pairs(opcoverage_or_skip), MISSING_SHARED),
                         ids=lambda value: getattr(value, "name", str(value)))
def test_opcoverage_model_bounds_contain_sampled_values(model_path, prop_path, method):
    # A twentieth of the property's box: CROWN on the cGAN generators (27k unstable ReLUs behind
    # upsampling) takes a minute in float64, while a smaller box exercises the same rules.
    assert _check_model(model_path, prop_path, method, shrink=0.05) == []
