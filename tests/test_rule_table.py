"""One row per ONNX operator the bound engine registers, checked for sampled soundness.

Each row is a tiny ONNX model: the input, a convex mixing of its last axis (so that the operator's
input is not the box itself and stays inside the row's domain), the operator (with its attributes
and constant operands), and a dense head on its flattened output. The model is loaded like every
other model (`load_model`, `build_network`) and its IBP and CROWN bounds at every node are checked
against sampled values (tests/soundness.py); the converted model must also agree with
onnxruntime, so that a row cannot pass on a wrongly converted operator. A registered operator
without a row fails `test_every_registered_operator_has_a_row`, so a new rule cannot land
untested; the mutations at the end show that the rows catch broken rules.

An operator may have several rows: other opsets or attribute forms, which onnx2torch converts to
other module types (each with its own factory).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests import soundness
from tests.graphs import GraphWriter
from verifier.bounds import activation, core, linear, logic, shape, supported_onnx_ops
from verifier.bounds.core import Backward, Interval
from verifier.bounds.network import Network
from verifier.bounds.relaxation import LinearRelaxation
from verifier.graph import build_network
from verifier.load import load_model

Build = Callable[[GraphWriter, str], str]


@dataclass(frozen=True)
class Row:
    """`build(g, x)` adds the operator on the variable `x` (shape `shape`) and returns its output.

    `domain`: the interval every input lies in (positive for Log, Sqrt, ...). `appears`: op types
    that must label a node of the bound graph (default: the row's own), so that a row cannot pass
    because its operator was folded away; `folded`: op types that must not (Shape is a constant).
    """

    build: Build
    shape: tuple[int, ...]
    domain: tuple[float, float] = (-2.0, 2.0)
    opset: int = 13
    appears: tuple[str, ...] | None = None
    folded: tuple[str, ...] = ()


def _ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def unary(op: str, **attributes) -> Build:
    return lambda g, x: g.op(op, [x], **attributes)


def with_constants(op: str, *constants: np.ndarray, **attributes) -> Build:
    """`op(x, *constants)`; integer arrays stay int64, others become float32."""

    def build(g: GraphWriter, x: str) -> str:
        names = [g.const(c, c.dtype if c.dtype == np.int64 else np.float32) for c in constants]
        return g.op(op, [x, *names], **attributes)

    return build


def mixed(g: GraphWriter, x: str, size: int) -> str:
    """A convex combination along the last axis (columns of a non-negative matrix summing to 1):
    the result lies in the hull of the inputs, so a row's domain is kept."""
    weights = g.rng.uniform(0.1, 1.0, (size, size))
    return g.op("MatMul", [x, g.const(weights / weights.sum(0, keepdims=True))])


def _add(g, x):  # a variable plus a variable, then plus a constant
    return g.op("Add", [g.op("Add", [x, mixed(g, x, 4)]), g.const(np.array([0.5, -1.0, 0.0, 2.0]))])


def _sub(g, x):  # a constant minus a variable, minus a variable
    return g.op("Sub", [g.op("Sub", [g.const(np.array(0.3)), x]), mixed(g, x, 4)])


def _mul(g, x):  # variable * variable, variable * constant, and x * x (a square)
    product = g.op("Mul", [x, mixed(g, x, 4)])
    return g.op("Mul", [g.op("Mul", [product, g.const(np.array([1.5, -0.5, 2.0, 1.0]))]), g.op("Mul", [x, x])])


def _div(g, x):  # variable / positive variable, variable / constant, constant / positive variable
    numerator = g.op("Sub", [mixed(g, x, 4), g.const(np.array(1.2))])
    quotient = g.op("Div", [numerator, x])
    return g.op("Add", [g.op("Div", [quotient, g.const(np.array(-1.7))]), g.op("Div", [g.const(np.array(2.0)), x])])


def _variadic(op: str) -> Build:
    return lambda g, x: g.op(op, [x, mixed(g, x, 4), g.const(np.array([0.5, -1.0, 0.0, 2.0]))])


def _matmul(g, x):  # x [1, 2, 3]: by a constant, and by a variable (x @ x^T)
    by_constant = g.op("MatMul", [x, g.weight(3, 3)])
    return g.op("MatMul", [by_constant, g.op("Transpose", [x], perm=[0, 2, 1])])


def _conv(g, x):
    return g.op("Conv", [x, g.weight(3, 2, 3, 3), g.const(g.rng.normal(0, 0.1, 3))], pads=[1, 1, 1, 1], strides=[2, 2])


def _conv1d(g, x):
    return g.op("Conv", [x, g.weight(3, 2, 3), g.const(g.rng.normal(0, 0.1, 3))], pads=[1, 0])


def _conv_transpose(g, x):
    return g.op("ConvTranspose", [x, g.weight(2, 3, 2, 2), g.const(g.rng.normal(0, 0.1, 3))], strides=[2, 2],
                pads=[1, 1, 1, 1], output_padding=[1, 0])


def _batch_norm(g, x):
    rng = g.rng
    return g.op("BatchNormalization", [x, g.const(rng.uniform(0.5, 1.5, 2)), g.const(rng.normal(0, .1, 2)),
                                       g.const(rng.normal(0, .1, 2)), g.const(rng.uniform(0.5, 2, 2))])


def _reduce_sum_dynamic(g, x):  # axes not an initializer: onnx2torch keeps them an operand
    axes = g.op("Identity", [g.const(_ints(1), np.int64)])
    return g.op("ReduceSum", [x, axes], keepdims=1)


def _compare(op: str) -> Build:
    """op(x, constant) and op(x, variable), as floats (x == constant on a grid of x's values)."""

    def build(g: GraphWriter, x: str) -> str:
        steps = g.op("Cast", [g.op("Cast", [g.op("Mul", [x, g.const(np.array(2.0))])], to=TensorProto.INT64)],
                     to=TensorProto.FLOAT)  # whole numbers, so that Equal holds on part of the box
        parts = [g.op(op, [steps, g.const(np.array([0.0, 1.0, -1.0, 2.0]))]), g.op(op, [x, mixed(g, x, 4)])]
        return g.op("Concat", [g.op("Cast", [p], to=TensorProto.FLOAT) for p in parts], axis=1)

    return build


def _where(g, x):  # a variable condition, variable and constant branches; a constant condition
    condition = g.op("Greater", [x, g.const(np.array([0.0, 0.5, -0.5, 1.0]))])
    chosen = g.op("Where", [condition, mixed(g, x, 4), g.const(np.array([1.0, -2.0, 0.0, 0.5]))])
    fixed = g.op("Where", [g.const(np.array([True, False, True, False]), np.bool_), x, g.op("Tanh", [x])])
    return g.op("Add", [chosen, fixed])


def _cast_to(to: int) -> Build:
    return lambda g, x: g.op("Cast", [g.op("Cast", [g.op("Mul", [x, g.const(np.array(1.7))])], to=to)],
                             to=TensorProto.FLOAT)


def _extremum(op: str) -> Build:  # a variable, a mixing of it and a constant
    return lambda g, x: g.op(op, [x, mixed(g, x, 4), g.const(np.array([0.5, -0.5, 0.0, 1.0]))])


def _arg_extremum(op: str, **attributes) -> Build:
    def build(g, x):
        index = g.op(op, [g.op("Add", [x, mixed(g, x, 4)])], axis=1, **attributes)
        return g.op("Cast", [index], to=TensorProto.FLOAT)
    return build


def _one_hot(g, x):  # indices -3..3 (negative ones count from the depth), some out of range
    indices = g.op("Cast", [g.op("Mul", [x, g.const(np.array(1.6))])], to=TensorProto.INT64)
    return g.op("OneHot", [indices, g.const(_ints(3), np.int64), g.const(np.array([-1.0, 2.0]))], axis=1)


def _scatter_nd(g, x):
    """Updates at constant indices: into variable data, variable updates into constant data, and
    both variable (scalar updates)."""
    into_data = g.op("ScatterND", [x, g.const(np.array([[0, 1], [0, 3]]), np.int64),
                                   g.const(np.array([[1.0, -1.0, 0.5], [0.0, 2.0, 3.0]]))])
    rows = g.op("ReduceSum", [x, g.const(_ints(1), np.int64)], keepdims=0)  # (1, 3)
    into_constant = g.op("ScatterND", [g.const(np.full((1, 4, 3), 0.25)), g.const(np.array([[0, 2]]), np.int64), rows])
    first_two = g.op("Slice", [rows, g.const(_ints(0, 0), np.int64), g.const(_ints(1, 2), np.int64)])
    scalars = g.op("Reshape", [first_two, g.const(_ints(2), np.int64)])
    both = g.op("ScatterND", [into_data, g.const(np.array([[0, 0, 0], [0, 2, 1]]), np.int64), scalars])
    return g.op("Concat", [into_data, into_constant, both], axis=1)


def _shape(g, x):  # Shape of the input feeding the Reshape of a variable: folded into a constant
    flat = g.op("Flatten", [mixed(g, x, 3)], axis=1)
    return g.op("Reshape", [flat, g.op("Shape", [x])])


def _split(outputs_from: Callable[[GraphWriter, str], list[str]]) -> Build:
    def build(g, x):
        first, second = outputs_from(g, x)
        return g.op("Concat", [second, first], axis=1)  # both outputs used, in swapped order
    return build


def _slice_without_axes(g, x):  # an empty optional operand before a given one (axes skipped, steps given)
    names = [g.const(v, np.int64) for v in (_ints(0, 0, 1), _ints(1, 4, 5), _ints(1, 2, 2))]
    return g.op("Slice", [x, names[0], names[1], "", names[2]])


def _resize_scales(g, x):
    return g.op("Resize", [x, "", g.const(np.array([1.0, 1.0, 2.0, 1.5]))], mode="nearest")


def _resize_sizes(g, x):  # torch's nearest is ONNX's asymmetric floor: other modes differ at these sizes
    return g.op("Resize", [x, "", "", g.const(_ints(1, 2, 3, 5), np.int64)], mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")


TABLE: dict[str, list[Row]] = {
    # activations
    "Relu": [Row(unary("Relu"), (1, 6))],
    "Sigmoid": [Row(unary("Sigmoid"), (1, 6), (-4.0, 4.0))],
    "Tanh": [Row(unary("Tanh"), (1, 6), (-3.0, 3.0))],
    "LeakyRelu": [Row(unary("LeakyRelu", alpha=0.1), (1, 6)), Row(unary("LeakyRelu", alpha=1.5), (1, 6)),
                  Row(unary("LeakyRelu", alpha=-0.3), (1, 6))],
    "PRelu": [Row(with_constants("PRelu", np.array([0.1, -0.5, 1.5, 0.0])), (1, 2, 4)),
              Row(with_constants("PRelu", np.array([[0.2], [2.0]])), (1, 2, 4)),
              Row(with_constants("PRelu", np.array(0.3)), (1, 4))],
    "Abs": [Row(unary("Abs"), (1, 6))],
    "Max": [Row(_extremum("Max"), (1, 4)), Row(lambda g, x: g.op("Max", [x, mixed(g, x, 4)]), (1, 4), opset=8)],
    "Min": [Row(_extremum("Min"), (1, 4)), Row(lambda g, x: g.op("Min", [x, g.const(np.array(0.3))]), (1, 4))],
    "HardSigmoid": [Row(unary("HardSigmoid", alpha=0.3, beta=0.4), (1, 6), (-4.0, 4.0))],
    "Elu": [Row(unary("Elu", alpha=0.7), (1, 6), (-3.0, 2.0))],
    "Clip": [Row(with_constants("Clip", np.array(-0.5), np.array(0.8)), (1, 6)),
             Row(unary("Clip", min=0.0, max=6.0), (1, 6), (-3.0, 8.0), opset=6),  # nn.ReLU6
             Row(with_constants("Clip", np.array(0.0)), (1, 6), appears=("Clip",))],  # nn.ReLU
    "Sign": [Row(unary("Sign"), (1, 6))],
    # smooth functions
    "Exp": [Row(unary("Exp"), (1, 6))],
    "Log": [Row(unary("Log"), (1, 6), (0.2, 3.0))],
    "Sqrt": [Row(unary("Sqrt"), (1, 6), (0.05, 3.0))],
    "Reciprocal": [Row(unary("Reciprocal"), (1, 6), (0.3, 3.0)), Row(unary("Reciprocal"), (1, 6), (-3.0, -0.3))],
    "Sin": [Row(unary("Sin"), (1, 6), (-4.0, 4.0))],
    "Cos": [Row(unary("Cos"), (1, 6), (-4.0, 4.0))],
    "Pow": [Row(with_constants("Pow", np.array(2.0)), (1, 6)), Row(with_constants("Pow", np.array(3.0)), (1, 6)),
            Row(with_constants("Pow", np.array(0.5)), (1, 6), (0.1, 3.0)),
            Row(with_constants("Pow", np.array(-1.5)), (1, 6), (0.3, 3.0)),
            Row(with_constants("Pow", np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])), (1, 6)),  # per element
            Row(lambda g, x: g.op("Pow", [g.const(np.array(1.8)), x]), (1, 6))],  # a variable exponent
    "Softmax": [Row(unary("Softmax", axis=-1), (1, 2, 4)), Row(unary("Softmax", axis=1), (1, 2, 4), opset=11),
                # a long axis (exp / sum, past PAIRWISE_LIMIT), at logits where exp overflows
                Row(lambda g, x: g.op("Softmax", [g.op("Mul", [x, g.const(np.array(60.0))])], axis=-1), (1, 4, 40))],
    # arithmetic
    "Add": [Row(_add, (1, 4))],
    "Sub": [Row(_sub, (1, 4))],
    "Mul": [Row(_mul, (1, 4))],
    "Div": [Row(_div, (1, 4), (0.5, 2.0))],
    "Neg": [Row(unary("Neg"), (1, 4))],
    "Sum": [Row(_variadic("Sum"), (1, 4))],
    "Mean": [Row(_variadic("Mean"), (1, 4))],
    # affine layers and reductions
    "Gemm": [Row(lambda g, x: g.op("Gemm", [x, g.weight(3, 4), g.const(g.rng.normal(0, .2, 3))], transB=1), (1, 4)),
             Row(lambda g, x: g.op("Gemm", [x, g.weight(4, 3)]), (1, 4))],
    "MatMul": [Row(_matmul, (1, 2, 3))],
    "Conv": [Row(_conv, (1, 2, 5, 5)), Row(_conv1d, (1, 2, 6))],
    "ConvTranspose": [Row(_conv_transpose, (1, 2, 3, 3))],
    "BatchNormalization": [Row(_batch_norm, (1, 2, 3, 3))],
    "AveragePool": [Row(unary("AveragePool", kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 1, 1],
                              count_include_pad=0), (1, 2, 4, 4))],
    "MaxPool": [Row(unary("MaxPool", kernel_shape=[2, 2], strides=[2, 2]), (1, 2, 4, 4)),
                Row(unary("MaxPool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), (1, 2, 4, 4))],
    "GlobalAveragePool": [Row(unary("GlobalAveragePool"), (1, 2, 3, 3))],
    "ReduceSum": [Row(with_constants("ReduceSum", _ints(2), keepdims=0), (1, 2, 3, 4)),
                  Row(unary("ReduceSum", axes=[1, -1], keepdims=1), (1, 2, 3, 4), opset=11),
                  Row(_reduce_sum_dynamic, (1, 2, 3, 4))],
    "ReduceMean": [Row(unary("ReduceMean", axes=[-1], keepdims=1), (1, 2, 3, 4)),
                   Row(unary("ReduceMean", keepdims=0), (1, 2, 3, 4))],
    # shapes and selections
    "Reshape": [Row(with_constants("Reshape", _ints(1, 3, 2)), (1, 2, 3))],
    "Flatten": [Row(unary("Flatten", axis=1), (1, 2, 3)), Row(unary("Flatten", axis=2), (1, 2, 3, 2))],
    "Squeeze": [Row(with_constants("Squeeze", _ints(1)), (1, 1, 3)),
                Row(unary("Squeeze", axes=[1]), (1, 1, 3), opset=11)],
    "Unsqueeze": [Row(with_constants("Unsqueeze", _ints(2)), (1, 3)),
                  Row(unary("Unsqueeze", axes=[1]), (1, 3), opset=11)],
    "Transpose": [Row(unary("Transpose", perm=[0, 3, 1, 2]), (1, 2, 3, 2)), Row(unary("Transpose"), (1, 2, 3))],
    "Concat": [Row(lambda g, x: g.op("Concat", [x, g.const(np.ones((1, 2))), mixed(g, x, 3)], axis=1), (1, 3))],
    "Slice": [Row(with_constants("Slice", _ints(1, 0), _ints(4, 5), _ints(1, 2), _ints(2, 2)), (1, 4, 5)),
              Row(unary("Slice", starts=[1], ends=[-1], axes=[2]), (1, 4, 5), opset=9),
              Row(_slice_without_axes, (1, 4, 5))],
    "Gather": [Row(with_constants("Gather", _ints(2, 0, 2), axis=1), (1, 4, 3)),
               Row(with_constants("Gather", np.array(1, dtype=np.int64), axis=2), (1, 4, 3))],
    "GatherElements": [Row(with_constants("GatherElements", np.array([[[3, 0], [1, 1], [2, 0]]], dtype=np.int64),
                                          axis=2), (1, 3, 4))],
    "GatherND": [Row(with_constants("GatherND", np.array([[[0, 2], [0, 0]]], dtype=np.int64)), (1, 3, 4)),
                 Row(with_constants("GatherND", np.array([[1, 2]], dtype=np.int64)), (2, 3, 4))],
    "Expand": [Row(with_constants("Expand", _ints(1, 3, 4)), (1, 3, 1)),
               Row(with_constants("Expand", _ints(2, 1, 1)), (1, 3))],
    "Tile": [Row(with_constants("Tile", _ints(1, 2, 2)), (1, 2, 3))],
    "Pad": [Row(with_constants("Pad", _ints(0, 0, 1, 0, 0, 0, 0, 1), np.array(0.25)), (1, 2, 3, 3)),
            Row(with_constants("Pad", _ints(0, 0, 1, 2, 0, 0, 2, 1), mode="reflect"), (1, 2, 3, 3)),
            Row(with_constants("Pad", _ints(0, 0, 0, 1, 0, 0, 2, 0), mode="edge"), (1, 2, 3, 3))],
    "Resize": [Row(_resize_scales, (1, 2, 2, 3)), Row(_resize_sizes, (1, 2, 2, 3)),
               Row(with_constants("Resize", np.array([1.0, 1.0, 2.0, 2.0]), mode="nearest"), (1, 2, 2, 3), opset=10)],
    "Upsample": [Row(with_constants("Upsample", np.array([1.0, 1.0, 2.0, 2.0]), mode="nearest"), (1, 2, 2, 3),
                     opset=9, appears=("Resize",))],  # the loader's opset upgrade makes it a Resize
    "Split": [Row(_split(lambda g, x: g.op("Split", [x, g.const(_ints(1, 3), np.int64)], outputs=2, axis=1)),
                  (1, 4, 3)),
              Row(_split(lambda g, x: g.op("Split", [x], outputs=2, axis=2)), (1, 3, 4)),
              Row(_split(lambda g, x: g.op("Split", [x], outputs=2, axis=1, split=[3, 1])), (1, 4, 3), opset=11)],
    "Identity": [Row(unary("Identity"), (1, 4))],
    "Dropout": [Row(unary("Dropout"), (1, 4)), Row(unary("Dropout", ratio=0.3), (1, 4), opset=10)],
    "Cast": [Row(unary("Cast", to=TensorProto.FLOAT), (1, 4), appears=()),  # float to float passes through
             Row(_cast_to(TensorProto.INT64), (1, 4)), Row(_cast_to(TensorProto.BOOL), (1, 4))],
    "Greater": [Row(_compare("Greater"), (1, 4))],
    "Less": [Row(_compare("Less"), (1, 4))],
    "GreaterOrEqual": [Row(_compare("GreaterOrEqual"), (1, 4))],
    "LessOrEqual": [Row(_compare("LessOrEqual"), (1, 4))],
    "Equal": [Row(_compare("Equal"), (1, 4))],
    "Where": [Row(_where, (1, 4))],
    "ArgMax": [Row(_arg_extremum("ArgMax", keepdims=0), (1, 3, 4)),
               Row(_arg_extremum("ArgMax", keepdims=1, select_last_index=1), (1, 3, 4)),
               Row(_arg_extremum("ArgMax", keepdims=1), (1, 3, 4), opset=11)],
    "ArgMin": [Row(_arg_extremum("ArgMin", keepdims=0), (1, 3, 4)),
               Row(lambda g, x: g.op("Cast", [g.op("ArgMin", [x], axis=1, keepdims=1)], to=TensorProto.FLOAT),
                   (1, 18, 2))],  # more elements than PAIRWISE_ARG_LIMIT: from their own intervals
    "OneHot": [Row(_one_hot, (1, 4), opset=11)],
    "ScatterND": [Row(_scatter_nd, (1, 4, 3))],
    "Shape": [Row(_shape, (1, 2, 3), appears=("Reshape",), folded=("Shape",))],
}

CASES = [pytest.param(op, i, row, id=f"{op}-{i}") for op, rows in sorted(TABLE.items()) for i, row in enumerate(rows)]


def row_model(row: Row, seed: int = 0) -> onnx.ModelProto:
    """The row's operator between a convex mixing of the input and a dense head to 3 outputs."""
    import onnxruntime

    g = GraphWriter(np.random.default_rng(seed))
    out = row.build(g, mixed(g, "x", row.shape[-1]))
    partial = g.model(list(row.shape), out, None, opset=row.opset)
    del partial.graph.output[:]
    partial.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(partial.SerializeToString(), providers=["CPUExecutionProvider"])
    low, high = row.domain
    width = session.run(None, {"x": np.full(row.shape, (low + high) / 2, np.float32)})[0].size
    flat = g.op("Reshape", [out, g.const(_ints(1, -1), np.int64)])
    head = g.op("MatMul", [flat, g.weight(width, 3)])
    return g.model(list(row.shape), head, [1, 3], opset=row.opset)


def row_network(row: Row, seed: int = 0) -> Network:
    """The row's bound graph (float64), after checking that it computes what onnxruntime does."""
    import onnxruntime

    model = row_model(row, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "row.onnx"
        onnx.save(model, path)
        network = build_network(load_model(str(path)))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    low, high = row.domain
    points = np.random.default_rng(seed).uniform(low, high, (4, *row.shape)).astype(np.float32)
    expected = np.stack([session.run(None, {"x": point})[0] for point in points])
    with torch.no_grad():
        got = network(torch.from_numpy(points)).reshape(expected.shape).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * (1 + np.abs(expected).max()), "the model converts wrongly"
    return network.double()


def row_box(row: Row, network: Network, seed: int, batch: int = 2) -> Interval:
    """Boxes inside the row's domain: two uniform points per input, sorted."""
    generator = torch.Generator().manual_seed(seed)
    low, high = row.domain
    ends = low + (high - low) * torch.rand((2, batch, *network.input_shape), generator=generator,
                                           dtype=torch.float64)
    return Interval(ends.amin(0), ends.amax(0))


def row_violations(row: Row, network: Network, seed: int = 0) -> list[str]:
    """What the IBP and CROWN checks find on `network` (the row's model) over a box of its domain."""
    box = row_box(row, network, seed)
    return [f"{method}: {found}" for method in ("ibp", "crown")
            for found in soundness.check(network, method, seed=seed, box=box)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is far faster than two waiting on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_registered_operator_has_a_row():
    registered = supported_onnx_ops()
    missing, extra = sorted(registered - TABLE.keys()), sorted(TABLE.keys() - registered)
    assert not missing, f"registered operators without a row in TABLE: {missing}"
    assert not extra, f"rows for operators that no rule registers: {extra}"


def test_a_registered_operator_without_a_row_is_caught(monkeypatch):
    monkeypatch.setattr(core, "_ONNX_OPS", core._ONNX_OPS | {"NewOperator"})
    with pytest.raises(AssertionError, match="NewOperator"):
        test_every_registered_operator_has_a_row()


@pytest.mark.parametrize("op,index,row", CASES)
@pytest.mark.parametrize("seed", range(2))
def test_rule_row_is_sound(op, index, row, seed):
    network = row_network(row, seed)
    labels = {node.label.split(" ")[0] for node in network.nodes}
    appears = (op,) if row.appears is None else row.appears
    assert set(appears) <= labels, f"{op}: no node of the bound graph comes from {appears} ({sorted(labels)})"
    assert not set(row.folded) & labels, f"{op}: {row.folded} should have been folded into constants"
    assert row_violations(row, network, seed) == []


# The table's rows catch broken rules: each mutation below must make its row fail.
ORIGINAL = {(cls, name): getattr(cls, name) for cls, name in [
    (shape.Select, "backward"), (activation.Sign, "relax"), (linear.Reduce, "backward"), (shape.Select, "ibp"),
    (logic.ArgExtremum, "ibp"), (logic.OneHot, "ibp"),
]}


def select_backward_without_fill(self, coeffs, x=None):
    step = ORIGINAL[shape.Select, "backward"](self, coeffs, x)
    return Backward(step.inputs, 0.0)  # the padded constants' share of the bound is dropped


def sign_relax_swapped(self, lower, upper, alpha=None):
    r = ORIGINAL[activation.Sign, "relax"](self, lower, upper, alpha)
    return LinearRelaxation(r.upper_slope, r.upper_intercept, r.lower_slope, r.lower_intercept)


def reduce_backward_halved(self, coeffs, x=None):
    step = ORIGINAL[linear.Reduce, "backward"](self, coeffs, x)
    return Backward([step.inputs[0] * 0.5], step.bias)


def select_ibp_raised_lower(self, x):
    interval = ORIGINAL[shape.Select, "ibp"](self, x)
    return Interval(interval.lower + (interval.upper - interval.lower) / 4, interval.upper)


def arg_extremum_ibp_first_only(self, x):
    interval = ORIGINAL[logic.ArgExtremum, "ibp"](self, x)
    return Interval(interval.lower, interval.lower)  # as if the first candidate always won


def one_hot_ibp_without_negative_indices(self, x):
    interval = ORIGINAL[logic.OneHot, "ibp"](self, Interval(x.lower.clamp(min=0), x.upper.clamp(min=0)))
    return interval  # an index below 0 read as 0, not as depth + index


MUTATIONS = [
    ("Pad", 0, shape.Select, "backward", select_backward_without_fill),
    ("Sign", 0, activation.Sign, "relax", sign_relax_swapped),
    ("GlobalAveragePool", 0, linear.Reduce, "backward", reduce_backward_halved),
    ("ReduceMean", 1, linear.Reduce, "backward", reduce_backward_halved),
    ("Tile", 0, shape.Select, "ibp", select_ibp_raised_lower),
    ("GatherND", 0, shape.Select, "ibp", select_ibp_raised_lower),
    ("ScatterND", 0, shape.Select, "backward", select_backward_without_fill),
    ("ArgMax", 0, logic.ArgExtremum, "ibp", arg_extremum_ibp_first_only),
    ("ArgMin", 0, logic.ArgExtremum, "ibp", arg_extremum_ibp_first_only),
    ("ArgMin", 1, logic.ArgExtremum, "ibp", arg_extremum_ibp_first_only),
    ("OneHot", 0, logic.OneHot, "ibp", one_hot_ibp_without_negative_indices),
]


@pytest.mark.parametrize("op,index,rule,name,broken", MUTATIONS,
                         ids=[f"{m[0]}-{m[1]}:{m[2].__name__}.{m[3]}" for m in MUTATIONS])
def test_broken_rule_fails_its_row(monkeypatch, op, index, rule, name, broken):
    row = TABLE[op][index]
    network = row_network(row)
    monkeypatch.setattr(rule, name, broken)
    assert row_violations(row, network), f"breaking {rule.__name__}.{name} went unnoticed by the {op} row"
