"""Random ONNX graphs that mix the operators of each family, for sampled soundness tests.

Each generator takes a numpy Generator and returns an ONNX model with one float32 input and one
output. Weights are random; the structure (which operators, residual adds, concatenations,
splits, NHWC transposes, products of two variables) varies with the seed.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphWriter:
    """Accumulates nodes and initializers with fresh names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.counter = itertools.count()

    def name(self, stem: str) -> str:
        return f"{stem}_{next(self.counter)}"

    def const(self, array: np.ndarray, dtype=np.float32) -> str:
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes) -> str | list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(f"n_{op_type}"), **attributes))
        return names[0] if outputs == 1 else names

    def weight(self, *shape: int, scale: float | None = None) -> str:
        fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
        scale = scale if scale is not None else 1.2 / np.sqrt(max(1, fan_in))
        return self.const(self.rng.normal(0, scale, shape))

    def dense(self, x: str, n_in: int, n_out: int, gemm: bool | None = None) -> str:
        if gemm if gemm is not None else self.rng.random() < 0.5:
            return self.op("Gemm", [x, self.weight(n_out, n_in), self.const(self.rng.normal(0, 0.2, n_out))],
                           transB=1)
        product = self.op("MatMul", [x, self.weight(n_in, n_out)])
        return self.op("Add", [product, self.const(self.rng.normal(0, 0.2, n_out))])

    def activation(self, x: str, choices=("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip")) -> str:
        kind = choices[self.rng.integers(len(choices))]
        if kind == "LeakyRelu":
            return self.op("LeakyRelu", [x], alpha=0.1)
        if kind == "Clip":
            return self.op("Clip", [x, self.const(np.array(-0.5)), self.const(np.array(0.8))])
        return self.op(kind, [x])

    def model(self, x_shape: list[int], output: str, out_shape: list[int], opset: int = 13) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "random",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def dense_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """MatMul/Gemm chains with every activation, residual Add/Sub, Neg and constant arithmetic."""
    g = GraphWriter(rng)
    width = int(rng.integers(4, 9))
    x = g.dense("x", 3, width)
    skip = x
    for _ in range(int(rng.integers(2, 4))):
        h = g.activation(x)
        h = g.dense(h, width, width)
        op = ("Add", "Sub")[int(rng.integers(2))]
        x = g.op(op, [h, skip]) if rng.random() < 0.7 else h
        skip = x
    x = g.op("Mul", [x, g.const(rng.normal(0, 1, width))])
    x = g.op("Div", [x, g.const(np.array(1.7))])
    x = g.op("Neg", [g.activation(x)])
    x = g.op("Sub", [g.const(np.array(0.3)), x])
    out = g.dense(x, width, 3)
    return g.model([1, 3], out, [1, 3])


def conv_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv, BatchNorm, Pad, pooling, ConvTranspose and an NHWC transpose before a dense head."""
    g = GraphWriter(rng)
    channels = int(rng.integers(2, 4))
    x = g.op("Conv", ["x", g.weight(channels, 2, 3, 3), g.const(rng.normal(0, 0.1, channels))],
             pads=[1, 1, 1, 1], strides=[int(rng.integers(1, 3))] * 2)
    x = g.op("BatchNormalization", [x, g.const(rng.uniform(0.5, 1.5, channels)), g.const(rng.normal(0, .1, channels)),
                                    g.const(rng.normal(0, .1, channels)), g.const(rng.uniform(0.5, 2, channels))])
    x = g.activation(x, ("Relu", "Sigmoid", "Tanh"))
    x = g.op("Pad", [x, g.const(np.array([0, 0, 1, 0, 0, 0, 0, 1]), np.int64), g.const(np.array(0.25))])
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 0, 0])
    x = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
             count_include_pad=int(rng.integers(2)))
    x = g.op("ConvTranspose", [x, g.weight(channels, 2, 2, 2), g.const(rng.normal(0, 0.1, 2))],
             strides=[2, 2], pads=[1, 1, 1, 1])
    x = g.activation(x, ("Relu",))
    x = g.op("Transpose", [x], perm=[0, 2, 3, 1])  # NHWC
    x = g.op("Flatten", [x], axis=1)
    return _dense_head(g, x, [1, 2, 6, 6])


def _dense_head(g: GraphWriter, x: str, input_shape: list[int]) -> onnx.ModelProto:
    """Infer the flat width of `x` by running the partial graph, then add a Gemm to 3 outputs."""
    import onnxruntime

    partial = g.model(input_shape, x, None)
    del partial.graph.output[:]
    partial.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(partial.SerializeToString(), providers=["CPUExecutionProvider"])
    width = session.run(None, {"x": np.zeros(input_shape, np.float32)})[0].shape[-1]
    out = g.dense(x, width, 3, gemm=True)
    return g.model(input_shape, out, [1, 3])


def shape_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """Reshape, Transpose, Slice, Gather, Concat with constants and with itself, Split, Squeeze."""
    g = GraphWriter(rng)
    x = g.dense("x", 4, 12)
    x = g.activation(x)
    x = g.op("Reshape", [x, g.const(np.array([1, 3, 4]), np.int64)])
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [1, 4, 3]
    a, b = g.op("Split", [x, g.const(np.array([1, 3]), np.int64)], outputs=2, axis=1)  # [1,1,3], [1,3,3]
    b = g.op("Slice", [b, g.const(np.array([0, 1]), np.int64), g.const(np.array([3, 3]), np.int64),
                       g.const(np.array([1, 2]), np.int64)])  # [1, 3, 2]
    c = g.op("Gather", [b, g.const(np.array([2, 0, 0]), np.int64)], axis=1)  # [1, 3, 2]
    a = g.op("Squeeze", [a, g.const(np.array([1]), np.int64)])  # [1, 3]
    a = g.op("Unsqueeze", [a, g.const(np.array([2]), np.int64)])  # [1, 3, 1]
    joined = g.op("Concat", [c, a, g.const(rng.normal(0, 1, (1, 3, 1))), b], axis=2)  # [1, 3, 6]
    joined = g.activation(joined)
    flat = g.op("Flatten", [joined], axis=1)  # [1, 18]
    out = g.dense(flat, 18, 3)
    return g.model([1, 4], out, [1, 3])


def product_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """Products and quotients of two variables, MatMul of two variables, Softmax, smooth functions."""
    g = GraphWriter(rng)
    left = g.dense("x", 3, 6)
    right = g.dense("x", 3, 6)
    product = g.op("Mul", [g.activation(left, ("Tanh", "Sigmoid")), right])
    positive = g.op("Add", [g.op("Sigmoid", [right]), g.const(np.array(0.5))])
    quotient = g.op("Div", [product, positive])
    smooth = [
        g.op("Exp", [g.op("Tanh", [quotient])]),
        g.op("Log", [positive]),
        g.op("Sin", [quotient]),
        g.op("Cos", [left]),
        g.op("Pow", [left, g.const(np.array(2.0))]),
        g.op("Pow", [right, g.const(np.array(3.0))]),
        g.op("Sqrt", [positive]),
        g.op("Reciprocal", [positive]),
    ]
    chosen = [smooth[i] for i in rng.choice(len(smooth), size=3, replace=False)]
    total = g.op("Sum", chosen) if len(chosen) > 1 else chosen[0]
    matrix_a = g.op("Reshape", [total, g.const(np.array([1, 2, 3]), np.int64)])
    matrix_b = g.op("Reshape", [g.dense("x", 3, 6), g.const(np.array([1, 3, 2]), np.int64)])
    attention = g.op("Softmax", [g.op("MatMul", [matrix_a, matrix_b])], axis=-1)  # [1, 2, 2]
    flat = g.op("Flatten", [attention], axis=1)
    mixed = g.op("Concat", [flat, quotient], axis=1)  # [1, 10]
    out = g.dense(mixed, 10, 3)
    return g.model([1, 3], out, [1, 3])


FAMILIES = {"dense": dense_graph, "conv": conv_graph, "shape": shape_graph, "products": product_graph}


def residual_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """Stacked padded and strided convolutions with residual adds, as in ResNets (window sweeps)."""
    g = GraphWriter(rng)
    channels = int(rng.integers(2, 4))
    x = g.op("Conv", ["x", g.weight(channels, 2, 3, 3), g.const(rng.normal(0, 0.1, channels))],
             pads=[1, 1, 1, 1], strides=[2, 2])  # 12x12 -> 6x6
    # two convolutions with nothing between them: window cells on padding must not leak
    x = g.op("Conv", [x, g.weight(channels, channels, 3, 3), g.const(rng.normal(0, .1, channels))], pads=[1, 1, 1, 1])
    x = g.op("Relu", [x])
    for _ in range(2):
        y = g.op("Relu", [g.op("Conv", [x, g.weight(channels, channels, 3, 3), g.const(rng.normal(0, .1, channels))],
                                pads=[1, 1, 1, 1])])
        y = g.op("Conv", [y, g.weight(channels, channels, 3, 3), g.const(rng.normal(0, .1, channels))],
                 pads=[1, 1, 1, 1])
        x = g.op("Relu", [g.op("Add", [y, x])])
    skip = g.op("Conv", [x, g.weight(channels, channels, 1, 1), g.const(rng.normal(0, .1, channels))], strides=[2, 2])
    y = g.op("Conv", [x, g.weight(channels, channels, 4, 4), g.const(rng.normal(0, .1, channels))],
             pads=[1, 1, 1, 1], strides=[2, 2])  # 6x6 -> 3x3
    x = g.op("Relu", [g.op("Add", [y, skip])])
    x = g.op("Flatten", [x], axis=1)
    return _dense_head(g, x, [1, 2, 12, 12])


FAMILIES["residual"] = residual_graph


def logic_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """Comparisons, Casts to bool and to integers, Where, and Pow with variable or per-element exponents."""
    g = GraphWriter(rng)
    x = g.dense("x", 3, 6)
    y = g.dense("x", 3, 6)
    threshold = g.const(rng.normal(0, 0.3, 6))
    compare = rng.choice(["Greater", "Less", "GreaterOrEqual", "LessOrEqual"])
    chosen = g.op("Where", [g.op(compare, [x, threshold]), g.activation(y), g.op("Tanh", [x])])
    versus = g.op("Where", [g.op("Greater", [x, y]), g.const(rng.normal(0, 1, 6)), y])
    as_float = g.op("Cast", [g.op("Cast", [g.op("Mul", [y, g.const(np.array(3.0))])], to=TensorProto.INT64)],
                    to=TensorProto.FLOAT)
    nonzero = g.op("Cast", [g.op("Cast", [g.op("Relu", [x])], to=TensorProto.BOOL)], to=TensorProto.FLOAT)
    equal = g.op("Cast", [g.op("Equal", [g.op("Relu", [y]), g.const(np.zeros(6))])], to=TensorProto.FLOAT)
    power = g.op("Pow", [g.const(np.array(2.0)), g.op("Tanh", [x])])
    per_element = g.op("Pow", [y, g.const(rng.integers(1, 4, (1, 6)).astype(np.float32))])
    parts = [chosen, versus, as_float, nonzero, equal, power, per_element]
    mixed = g.op("Concat", parts, axis=1)  # [1, 42]
    out = g.dense(mixed, 6 * len(parts), 3)
    return g.model([1, 3], out, [1, 3])


FAMILIES["logic"] = logic_graph
