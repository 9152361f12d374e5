"""MaxPool with padding behind a Log: input bounds of -inf (Log near 0) must never pick a padding cell.

Before the fix the backward rule chose, in a window whose real elements all had lower bound -inf,
the padding cell (also -inf) and indexed it as -1: `verify bounds --method crown` and `verify`
ended in an internal error ("index -1 is out of bounds").
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from tests import soundness
from verifier import cli
from verifier.bounds.core import Interval
from verifier.bounds.pool import MaxPool2d
from verifier.graph import build_network
from verifier.load import load_model

# X is 4 x 4; the top-left 2 x 2 block may be 0 (its Log bounds are infinite), X_15 dominates its windows
LOWER = np.array([0, 0, .5, .5, 0, 0, .5, .5, .5, .5, .5, .5, .5, .5, .5, 2])
UPPER = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 20.0])


def _log_max_pool(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["l"]),
         helper.make_node("MaxPool", ["l"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Flatten", ["p"], ["y"])],
        "log_max_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    model = tmp_path / "log_max_pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    lines = [f"(declare-const X_{i} Real)" for i in range(16)] + [f"(declare-const Y_{j} Real)" for j in range(16)]
    for i in range(16):
        lines += [f"(assert (>= X_{i} {float(LOWER[i])!r}))", f"(assert (<= X_{i} {float(UPPER[i])!r}))"]
    lines.append("(assert (>= Y_11 (+ Y_15 0.5)))")  # false: both are Log(X_15)
    prop = tmp_path / "log_max_pool.vnnlib"
    prop.write_text("\n".join(lines) + "\n")
    return model, prop


def _points(count: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform points of the box, and corners (where Log(0) = -inf)."""
    uniform = rng.uniform(LOWER, UPPER, size=(count, 16))
    corners = np.where(rng.random((count, 16)) < 0.5, LOWER, UPPER)
    return np.concatenate([uniform, corners, [LOWER, UPPER]])


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_verify_bounds_contains_sampled_outputs(capsys, tmp_path, method):
    model, prop = _log_max_pool(tmp_path)
    code = cli.main(["bounds", str(model), str(prop), "--method", method, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (case,) = json.loads(out.strip().splitlines()[-1])["cases"]
    lower, upper = np.array(case["lower"], dtype=float), np.array(case["upper"], dtype=float)
    session = onnxruntime.InferenceSession(str(model))
    xs = _points(100, np.random.default_rng(0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        ys = np.concatenate([session.run(None, {"x": x.reshape(1, 1, 4, 4)})[0] for x in xs]).astype(np.float64)
    assert np.all(lower <= ys) and np.all(ys <= upper)
    assert np.isfinite(lower[1:]).all() and np.isfinite(upper[[3, 7, 11, 12, 13, 14, 15]]).all()  # not vacuous


def test_verify_runs_every_bound_stage_without_an_internal_error(capsys, tmp_path):
    model, prop = _log_max_pool(tmp_path)
    code = cli.main([str(model), str(prop), "--json", "--set", "branch.split=none", "--set", "attack.rounds=1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["verdict"] == "unknown" and "crown" in report["timings"] and "alpha-crown" in report["timings"]


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_sampled_soundness_behind_a_log_at_zero(tmp_path, method):
    model, _ = _log_max_pool(tmp_path)
    network = build_network(load_model(str(model))).to(torch.float64)
    box = Interval(torch.from_numpy(LOWER).reshape(1, *network.input_shape),
                   torch.from_numpy(UPPER).reshape(1, *network.input_shape))
    for seed in range(3):
        assert soundness.check(network, method, seed=seed, box=box) == []


@pytest.mark.parametrize("padding,stride", [(1, 1), (1, 2), (2, 3)])
def test_the_backward_rule_is_sound_when_whole_windows_have_no_lower_bound(padding, stride):
    # The rule alone, on bounds as a Log gives them: -inf below in some windows, finite above.
    generator = torch.Generator().manual_seed(padding + stride)
    kernel = 2 * padding + 1
    module = torch.nn.MaxPool2d(kernel, stride, padding)
    shape = (2, 5, 5)
    out_shape = tuple(module(torch.zeros(1, *shape)).shape[1:])
    rule = MaxPool2d(module, shape, out_shape).double()
    upper = torch.rand((3, *shape), generator=generator, dtype=torch.float64) * 2 - 1
    lower = upper - torch.rand((3, *shape), generator=generator, dtype=torch.float64)
    lower[:, :, :3, :3] = -torch.inf  # whole windows, padding included, without a lower bound
    lower[1] = -torch.inf             # and a box without any
    upper[2, 0] = torch.inf           # a plane without upper bounds, whose rows' coefficients are 0
    coeffs = torch.randn((3, 8, *out_shape), generator=generator, dtype=torch.float64)
    coeffs[2, :, 0] = 0.0
    result = rule.backward(coeffs, Interval(lower, upper))
    (back,) = result.inputs
    assert torch.isfinite(back).all() and torch.isfinite(result.bias).all()  # no 0 * inf
    # <coeffs, maxpool(v)> >= <back, v> + bias for every v in the box (infinite bounds: 1e3 away)
    floor = torch.where(torch.isinf(lower), upper.clamp(max=1) - 1e3, lower)
    ceiling = torch.where(torch.isinf(upper), floor + 1e3, upper)
    for _ in range(20):
        v = floor + (ceiling - floor) * torch.rand(lower.shape, generator=generator, dtype=torch.float64)
        v = torch.where(torch.rand(lower.shape, generator=generator) < 0.3, ceiling, v)
        exact = (coeffs * rule(v).unsqueeze(1)).flatten(2).sum(-1)
        linear = (back * v.unsqueeze(1)).flatten(2).sum(-1) + result.bias
        assert torch.all(exact >= linear - 1e-9 * (1 + exact.abs()))
