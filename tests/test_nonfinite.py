"""Models that produce inf or NaN themselves are verified, not stopped by the load-time check.

Each used to end in "rule disagrees with the operator by nan": an overflow at the box centre, a
multiplication by an infinite constant, a divisor that is 0 at the centre, softmax logits above
89 and a Clip with min = -inf. Each must now get a verdict, and the verdict must be right.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier import cli


def _model(path, nodes, constants=(), inputs: int = 1, outputs: int = 1) -> str:
    graph = helper.make_graph(nodes, "nonfinite", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, outputs])],
                              [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in constants])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return str(path)


def _property(path, boxes: list[tuple[float, float]], outputs: int, condition: str) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(len(boxes))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(outputs)]
    for i, (low, high) in enumerate(boxes):
        lines += [f"(assert (>= X_{i} {low}))", f"(assert (<= X_{i} {high}))"]
    path.write_text("\n".join(lines + [f"(assert {condition})"]) + "\n")
    return str(path)


def _verdict(capsys, model: str, prop: str) -> str:
    code = cli.main([model, prop, "--timeout", "15"])
    out, err = capsys.readouterr()
    assert code == 0 and "internal error" not in err, err
    return out.strip().splitlines()[-1]


MUL = [helper.make_node("Mul", ["x", "c"], ["y"])]


@pytest.mark.parametrize("name, nodes, constants, box, condition, wrong", [
    # x * 1e30 * 1e30 overflows to inf in float32 on all of [0.5, 1.5]: "y <= 0" never holds,
    # but no finite counterexample exists (onnxruntime gives inf), so it must not be proved.
    ("overflow", [helper.make_node("Mul", ["x", "c"], ["a"]), helper.make_node("Mul", ["a", "c"], ["y"])],
     [("c", [[1e30]])], (0.5, 1.5), "(>= Y_0 0)", "unsat"),
    ("infinite constant", MUL, [("c", [[np.inf]])], (0.5, 1.5), "(>= Y_0 0)", "unsat"),
    ("divisor 0 at the centre", [helper.make_node("Div", ["c", "x"], ["y"])], [("c", [[1.0]])], (-1.0, 1.0),
     "(>= Y_0 100)", "unsat"),
    ("clip with min -inf", [helper.make_node("Clip", ["x", "low", "high"], ["y"])],
     [("low", -np.inf), ("high", 1.0)], (-5.0, 5.0), "(>= Y_0 1.5)", "sat"),
])
def test_models_that_overflow_get_a_right_verdict(capsys, tmp_path, name, nodes, constants, box, condition, wrong):
    model = _model(tmp_path / "m.onnx", nodes, constants)
    verdict = _verdict(capsys, model, _property(tmp_path / "p.vnnlib", [box], 1, condition))
    assert verdict in ("sat", "unsat", "unknown", "timeout") and verdict != wrong, (name, verdict)


def test_softmax_of_large_logits_is_bounded(capsys, tmp_path):
    # logits 100 * x with x near 1: exp(100) overflows float32; softmax itself stays in (0, 1)
    nodes = [helper.make_node("Mul", ["x", "c"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=1)]
    model = _model(tmp_path / "s.onnx", nodes, [("c", [[100.0, 100.0, 101.0]])], inputs=3, outputs=3)
    boxes = [(0.99, 1.01)] * 3
    # finite bounds (IBP puts softmax 0 below 1.6 here; the old exp(x_i) / sum exp(x_j) gave inf)
    assert _verdict(capsys, model, _property(tmp_path / "a.vnnlib", boxes, 3, "(>= Y_0 2)")) == "unsat"
    assert _verdict(capsys, model, _property(tmp_path / "b.vnnlib", boxes, 3, "(<= Y_2 0.4)")) == "sat"
