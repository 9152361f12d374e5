"""Exporter forms the loader rewrites, and integer nodes, checked against onnxruntime.

Constant nodes as weights, Split at opset 18 (uneven axes), a graph output that is one output
of a Split whose other outputs feed later nodes, auto_pad SAME, Casts to narrow integer types
out of their range, and integer arithmetic that the engine must refuse.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests import soundness
from verifier.bounds.core import Interval
from verifier.errors import ModelError
from verifier.graph import build_network
from verifier.load import load_model
from verifier.output_bounds import raw_output_bounds

FLOAT = TensorProto.FLOAT


def save(tmp_path, nodes, x_shape, y_shape, initializers=(), name="m.onnx", opset=18):
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", FLOAT, y_shape)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


def agrees_with_onnxruntime(path, x_shape, low=-2.0, high=2.0):
    """The converted module and onnxruntime agree on random inputs; the bounds hold sampled values."""
    model = load_model(path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.uniform(low, high, x_shape).astype(np.float32)
        expected = session.run(None, {"x": x})[0]
        got = model.module(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    network = build_network(model)
    assert soundness.check(network.to(torch.float64), "crown", seed=0) == []


def test_constant_nodes_as_weights_and_same_padding(tmp_path):
    weight = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(2, 1, 3, 3)).astype(np.float32)))
    bias = helper.make_node("Constant", [], ["b"], value_floats=[0.5, -0.5])
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2])
    path = save(tmp_path, [weight, bias, conv, helper.make_node("Relu", ["c"], ["y"])], [1, 1, 5, 4], [1, 2, 3, 2])
    agrees_with_onnxruntime(path, (1, 1, 5, 4))


def test_split_18_uneven_and_one_output_of_it_as_the_graph_output(tmp_path):
    nodes = [helper.make_node("Split", ["x"], ["a", "y"], axis=1, num_outputs=2),  # 7 -> 4 + 3
             helper.make_node("Relu", ["y"], ["unused"])]  # a later reader of the output value
    path = save(tmp_path, nodes, [1, 7], [1, 3])
    agrees_with_onnxruntime(path, (1, 7))


def test_casts_to_narrow_integers_keep_the_whole_range_outside_it(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.UINT8),
             helper.make_node("Cast", ["i"], ["y"], to=FLOAT)]
    network = build_network(load_model(save(tmp_path, nodes, [1], [1])))
    lower, upper = raw_output_bounds(network, Interval(torch.tensor([[-1.9]]), torch.tensor([[1.9]])), "ibp")[:2]
    assert (float(lower), float(upper)) == (0.0, 255.0)  # -1.5 casts to an unspecified byte
    lower, upper = raw_output_bounds(network, Interval(torch.tensor([[0.2]]), torch.tensor([[3.7]])), "ibp")[:2]
    assert (float(lower), float(upper)) == (0.0, 3.0)


@pytest.mark.parametrize("op,dtype", [("Div", np.int64), ("Mul", np.int32), ("Add", np.int8)])
def test_integer_arithmetic_that_differs_from_real_arithmetic_is_refused(tmp_path, op, dtype):
    to = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=to), helper.make_node(op, ["i", "k"], ["j"]),
             helper.make_node("Cast", ["j"], ["y"], to=FLOAT)]
    path = save(tmp_path, nodes, [1], [1], [numpy_helper.from_array(np.array([2], dtype=dtype), "k")])
    with pytest.raises(ModelError, match=f"{op}.*integer arithmetic"):
        build_network(load_model(path))


def test_int64_sums_of_casts_are_bounded(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64), helper.make_node("Add", ["i", "k"], ["j"]),
             helper.make_node("Cast", ["j"], ["y"], to=FLOAT)]
    path = save(tmp_path, nodes, [1], [1], [numpy_helper.from_array(np.array([3], dtype=np.int64), "k")])
    network = build_network(load_model(path))
    lower, upper = raw_output_bounds(network, Interval(torch.tensor([[-1.5]]), torch.tensor([[2.5]])), "ibp")[:2]
    assert float(lower) <= 2.0 and float(upper) >= 5.0 and float(upper) < 5.01  # trunc(-1.5) + 3, trunc(2.5) + 3
