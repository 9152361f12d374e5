"""Write the example model and properties that the README's quick start verifies.

    python examples/make_examples.py      # rewrites examples/*.onnx, *.vnnlib and instances.csv

The model is a small ReLU classifier (4 inputs, 3 classes) with fixed seeded weights, built
directly with onnx.helper. The two properties ask whether the class predicted at a fixed input stays the top class
around it: within radius 0.02 it does (unsat), within radius 0.5 it does not (sat).
`instances.csv` lists both, so that the folder is a suite for `verify suite examples`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
CENTER = np.array([0.6, -0.2, 0.3, 0.1])


def build_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w1 = rng.normal(0, 0.8, (4, 16)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 16).astype(np.float32)
    w2 = rng.normal(0, 0.5, (16, 3)).astype(np.float32)
    b2 = np.array([0.3, 0.0, -0.1], dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"], name="dense1"),
        helper.make_node("Add", ["h1", "b1"], ["a1"], name="bias1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="dense2"),
        helper.make_node("Add", ["h2", "b2"], ["output"], name="bias2"),
    ]
    graph = helper.make_graph(
        nodes, "example_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def robustness_property(radius: float, label: int = 0, classes: int = 3) -> str:
    lines = [f"; class {label} stays the largest output within L-inf radius {radius} of the centre"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(CENTER))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    for i, value in enumerate(CENTER):
        lines.append(f"(assert (>= X_{i} {value - radius:.6f}))")
        lines.append(f"(assert (<= X_{i} {value + radius:.6f}))")
    others = "\n".join(f"    (and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label)
    lines.append(f"(assert (or\n{others}\n))")
    return "\n".join(lines) + "\n"


def predicted_class(model: onnx.ModelProto) -> int:
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    hidden = np.maximum(CENTER @ weights["w1"] + weights["b1"], 0)
    return int(np.argmax(hidden @ weights["w2"] + weights["b2"]))


def main() -> None:
    model = build_model()
    label = predicted_class(model)
    onnx.save(model, HERE / "classifier.onnx")
    (HERE / "classifier_radius_0.02.vnnlib").write_text(robustness_property(0.02, label))
    (HERE / "classifier_radius_0.5.vnnlib").write_text(robustness_property(0.5, label))
    (HERE / "instances.csv").write_text("".join(f"classifier.onnx,classifier_radius_{radius}.vnnlib,60\n"
                                                for radius in ("0.02", "0.5")))


if __name__ == "__main__":
    main()
