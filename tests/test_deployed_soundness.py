"""The bounds hold for what onnxruntime computes, on every shared competition model.

Points inside the first input box of each model (uniform, corners, and points pushed to the
extremes of random node directions by gradient steps) are run through onnxruntime on the original
ONNX file, and every output must lie within the IBP and CROWN bounds, computed in the model's own
type (the first pass) and for float32 models also in float64 (the re-check), rounding of the
deployed model included.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests import soundness
from tests.conftest import (
    MISSING_SHARED,
    bounded_opcoverage_pairs,
    cached_model,
    model_pairs,
    shared_or_skip,
    skipped_if_empty,
)
from verifier.bounds.core import Interval
from verifier.bounds.engine import backward_bound, crown_bounds, interval_bounds
from verifier.errors import ModelError
from verifier.graph import build_network
from verifier.spec import Spec
from verifier.vnnlib import parse_file
from verifier.witness import OnnxChecker

ROWS = 8  # output coordinates bounded by CROWN (each from below and above)


def _deployed_box(model_path, prop_path, shrink: float):
    try:
        model = cached_model(str(model_path))
        prop = parse_file(prop_path).padded_to_outputs(model.num_outputs)
        network = build_network(model, torch.from_numpy((prop.cases[0].lower + prop.cases[0].upper) / 2))
    except ModelError as error:
        pytest.skip(f"not supported: {error}")
    spec = Spec.build(prop, network.input_shape, network.dtype)
    center, radius = spec.box.center[:1], spec.box.radius[:1] * shrink
    box = Interval((center - radius).to(network.dtype), (center + radius).to(network.dtype))
    return model, network, box


def _output_bounds(network, box, method: str, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the flat outputs `rows` (IBP: of all outputs)."""
    with torch.no_grad():
        if method == "ibp":
            out = interval_bounds(network, box)[network.output]
            return out.lower.reshape(-1).double().numpy(), out.upper.reshape(-1).double().numpy()
        count = math.prod(network.output_shape)
        eye = torch.eye(count, dtype=network.dtype)[rows]
        coeffs = torch.cat([eye, -eye]).reshape(1, 2 * len(rows), *network.output_shape)
        bound = backward_bound(network, network.output, coeffs, crown_bounds(network, box)).lower[0].double()
        lower, upper = np.full(count, -np.inf), np.full(count, np.inf)
        lower[rows.numpy()] = bound[: len(rows)].numpy()
        upper[rows.numpy()] = -bound[len(rows):].numpy()
        return lower, upper


def _check(model_path, prop_path, method: str, dtype: torch.dtype | None, shrink: float) -> list[str]:
    model, network, box = _deployed_box(model_path, prop_path, shrink)
    if dtype == model.dtype:
        pytest.skip("the model's own type is the first pass")
    dtype = dtype or model.dtype
    generator = torch.Generator().manual_seed(1)
    points = soundness.sample_points(network, box, generator, uniform=16, corners=8, pushed_nodes=3, steps=6)
    points = points.reshape(-1, *network.input_shape)
    np_dtype = np.float32 if model.dtype == torch.float32 else np.float64
    checker = OnnxChecker(str(model_path), model.input_name, model.input_shape, np_dtype)
    outputs = np.stack([checker.outputs(p.numpy().reshape(-1)) for p in points])
    count = outputs.shape[1]
    rows = torch.randperm(count, generator=generator)[:ROWS]
    wide = network.to(dtype)
    lower, upper = _output_bounds(wide, Interval(box.lower.to(dtype), box.upper.to(dtype)), method, rows)
    bad = np.argwhere((outputs < lower) | (outputs > upper))
    return [f"point {p}, Y_{j}: onnxruntime {outputs[p, j]!r} outside [{lower[j]!r}, {upper[j]!r}]"
            for p, j in bad[:5]]


FIRST_PASS = [("ibp", None), ("crown", None)]  # in the model's own type
CASES = [*FIRST_PASS, ("crown", torch.float64)]


@pytest.mark.parametrize("method, dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("model_path,prop_path", skipped_if_empty(model_pairs(shared_or_skip), MISSING_SHARED),
                         ids=lambda value: getattr(value, "name", str(value)))
def test_competition_model_bounds_contain_onnxruntime_outputs(model_path, prop_path, method, dtype):
    assert _check(model_path, prop_path, method, dtype, 1.0) == []


@pytest.mark.parametrize("method, dtype", FIRST_PASS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("model_path,prop_path", skipped_if_empty(bounded_opcoverage_pairs(), MISSING_SHARED),
                         ids=lambda value: getattr(value, "name", str(value)))
def test_opcoverage_model_bounds_contain_onnxruntime_outputs(model_path, prop_path, method, dtype):
    # a twentieth of the box, as in test_soundness_models: the same rules, a minute less of CROWN
    assert _check(model_path, prop_path, method, dtype, 0.05) == []
