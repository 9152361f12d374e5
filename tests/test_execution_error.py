"""The rounding allowance of each operator holds for what onnxruntime computes.

Every elementary function onnxruntime approximates, and every correctly rounded one, is run on a
grid of float32 arguments that covers every exponent of its domain (plus the edges where the
runtime clamps, such as sigmoid and tanh at large |x|), and compared with the exact value (float64
math on the same float32 arguments): the difference must stay within the rule's allowance.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from torch import Tensor

from verifier.bounds.core import FUNCTION_ROUNDINGS, execution_rounding


def _grid(positive_only: bool, limit: float) -> np.ndarray:
    """Float32 values of every binary exponent up to `limit`, 64 mantissas each, and their negatives."""
    exponents = np.arange(-126, int(np.log2(limit)) + 1)
    mantissas = np.linspace(1, 2, 64, endpoint=False)
    values = (mantissas[None, :] * 2.0 ** exponents[:, None]).reshape(-1)
    values = values[values <= limit].astype(np.float32)
    return values if positive_only else np.concatenate([-values[::-1], [0], values]).astype(np.float32)


def _run(op: str, x: np.ndarray) -> np.ndarray:
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], op,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, x.size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, x.size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.reshape(1, -1)})[0].reshape(-1).astype(np.float64)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(x / 2))


# op: (exact function in float64, approximated by the runtime, positive arguments only, largest |x|)
FUNCTIONS = {"Exp": (np.exp, True, False, 88.0), "Log": (np.log, True, True, 3e38),
             "Tanh": (np.tanh, True, False, 3e38), "Sigmoid": (_sigmoid, True, False, 3e38),
             "Sin": (np.sin, True, False, 1e4), "Cos": (np.cos, True, False, 1e4),
             "Sqrt": (np.sqrt, False, True, 3e38), "Reciprocal": (lambda x: 1 / x, False, True, 1e38)}


@pytest.mark.parametrize("op", sorted(FUNCTIONS))
def test_onnxruntime_stays_within_the_rounding_allowance(op):
    exact_function, approximated, positive, limit = FUNCTIONS[op]
    x = _grid(positive, limit)
    got = _run(op, x)
    with np.errstate(over="ignore", divide="ignore"):
        exact = exact_function(x.astype(np.float64))
    finite = np.isfinite(exact) & (np.abs(exact) < np.finfo(np.float32).max)
    size = torch.from_numpy(np.abs(exact[finite]))
    allowance = (execution_rounding(torch.float32, FUNCTION_ROUNDINGS, size + 1) if approximated
                 else execution_rounding(torch.float32, 1, size)).numpy()
    error = np.abs(got[finite] - exact[finite])
    worst = int(np.argmax(error / allowance))
    assert np.all(error <= allowance), (op, float(x[finite][worst]), float(got[finite][worst]),
                                        float(exact[finite][worst]), float(allowance[worst]))


def _relu_matmul(weight: np.ndarray) -> onnxruntime.InferenceSession:
    n, m = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])], "relu_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, m])],
        [helper.make_tensor("w", TensorProto.FLOAT, [n, m], weight.reshape(-1).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("live", [200, 1000])
def test_a_dot_product_rounds_only_in_its_non_zero_terms(live):
    """Inputs a ReLU holds at exactly 0 add no rounding: the allowance counts only the live terms,
    and it still holds what onnxruntime computes; two roundings would not (so the count matters)."""
    from verifier.bounds.core import Interval
    from verifier.bounds.linear import Linear

    rng = np.random.default_rng(live)
    dead = 3 * live
    weight = rng.uniform(0.5, 1.5, size=(dead + live, 8)).astype(np.float32)
    lower = np.concatenate([np.full(dead, -2.0), np.full(live, 0.9)]).astype(np.float32)
    upper = np.concatenate([np.full(dead, -1.0), np.full(live, 1.1)]).astype(np.float32)
    points = (lower + rng.random((256, dead + live)) * (upper - lower)).astype(np.float32)
    got = _relu_matmul(weight).run(None, {"x": points})[0].astype(np.float64)
    exact = np.maximum(points.astype(np.float64), 0) @ weight.astype(np.float64)
    error = np.abs(got - exact).max(0)

    rule = Linear(torch.from_numpy(weight.T.copy()), None)
    rule.exec_dtype = torch.float32
    relu_out = Interval(torch.from_numpy(np.maximum(lower, 0))[None], torch.from_numpy(np.maximum(upper, 0))[None])
    assert int(rule.active_terms(relu_out).max()) == live + 1
    allowance = rule.execution_error(relu_out)[0].numpy()
    assert np.all(error <= allowance), (error, allowance)
    two_roundings = execution_rounding(torch.float32, 2, rule.magnitude(relu_out))[0].numpy()
    assert np.any(error > two_roundings)


def test_a_convolution_counts_the_live_inputs_under_each_window():
    from verifier.bounds.core import Interval
    from verifier.bounds.linear import Conv

    module = torch.nn.Conv2d(2, 3, 3, padding=1)
    rule = Conv(module, (2, 5, 5), (3, 5, 5))
    lower = torch.zeros(1, 2, 5, 5)
    upper = torch.zeros(1, 2, 5, 5)
    upper[0, 0, 2, 2] = 1.0  # one live input: the 3x3 windows around it see it, the others nothing
    upper[0, 1, 0, 0] = 1.0
    counts = rule.active_terms(Interval(lower, upper))
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] += 1
    expected[0:2, 0:2] += 1
    assert torch.equal(counts[0, 0], expected + 1)


def test_neurons_at_zero_widened_only_by_underflow_are_not_refined(tmp_path):
    """A layer fed only by dead ReLUs computes exactly 0; its interval is that 0 widened by the
    underflow terms of the rounding bound, which no CROWN sweep can narrow: it is not refined."""
    from tests.graphs import GraphWriter
    from verifier.bounds.core import Interval
    from verifier.bounds.engine import crown_bounds
    from verifier.bounds.optimize import AlphaStore
    from verifier.graph import build_network
    from verifier.load import load_model

    writer = GraphWriter(np.random.default_rng(0))
    dead = writer.op("Relu", [writer.op("Add", ["x", writer.const(np.full(4, -5.0))])])  # always 0
    hidden = writer.op("Relu", [writer.op("MatMul", [dead, writer.weight(4, 6)])])
    live = writer.op("Relu", [writer.dense("x", 4, 6, gemm=True)])
    live = writer.op("Relu", [writer.dense(live, 6, 6, gemm=True)])
    out = writer.dense(writer.op("Add", [hidden, live]), 6, 2, gemm=True)
    path = tmp_path / "dead.onnx"
    onnx.save(writer.model([1, 4], out, [1, 2]), path)
    network = build_network(load_model(str(path)))
    box = Interval(-torch.ones(1, 4), torch.ones(1, 4))
    alphas = AlphaStore()
    bounds = crown_bounds(network, box, alphas)
    dead_gemm = next(i for i, node in enumerate(network.nodes) if node.inputs and node.inputs[0] == 2)
    widths = bounds[dead_gemm].upper - bounds[dead_gemm].lower
    assert bool((widths > 0).all()) and float(widths.max()) < 1e-30  # only the underflow terms
    assert alphas.positions[dead_gemm].numel() == 0
    assert any(p.numel() > 0 for p in alphas.positions.values())  # the live layer still is


def test_real_arithmetic_drops_every_allowance_but_a_casts(tmp_path):
    """A network bounded in real arithmetic (a VNN-LIB 2.0 query over `real` tensors) keeps no
    allowance for onnxruntime's rounding of a sum, but keeps a Cast's, which is the operation."""
    from tests.graphs import GraphWriter
    from verifier.bounds.core import Interval
    from verifier.bounds.engine import interval_bounds
    from verifier.graph import build_network
    from verifier.load import load_model

    writer = GraphWriter(np.random.default_rng(0))
    total = writer.dense("x", 3, 4, gemm=True)
    half = writer.op("Cast", [writer.op("Cast", [total], to=TensorProto.FLOAT16)], to=TensorProto.FLOAT)
    path = tmp_path / "cast.onnx"
    onnx.save(writer.model([1, 3], half, [1, 4]), path)
    network = build_network(load_model(str(path)))
    point = torch.tensor([[0.1, -0.7, 0.3]])

    def widths() -> list[Tensor]:
        bounds = interval_bounds(network, Interval(point, point))
        return [b.upper - b.lower for b in bounds]

    deployed = widths()
    network.real_arithmetic = True
    real = widths()
    gemm = next(i for i, node in enumerate(network.nodes) if node.label.startswith("Gemm"))
    cast = next(i for i, node in enumerate(network.nodes) if node.label.startswith("Cast"))
    # the Gemm keeps only the rounding of its own bound's float computation
    assert bool((real[gemm] < 0.8 * deployed[gemm]).all())
    # the cast to float16 adds the same allowance in both (float16's rounding, about 1e-3 relative)
    source = network.nodes[cast].inputs[0]
    added = [w[cast] - w[source] for w in (deployed, real)]
    assert bool((added[1] > 0).all()) and torch.allclose(added[0], added[1], rtol=1e-3)
