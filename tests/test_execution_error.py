"""The rounding allowance of each operator holds for what onnxruntime computes.

Every elementary function onnxruntime approximates, and every correctly rounded one, is run on a
grid of float32 arguments that covers every exponent of its domain (plus the edges where the
runtime clamps, such as sigmoid and tanh at large |x|), and compared with the exact value (float64
math on the same float32 arguments): the difference must stay within the rule's allowance.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

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
