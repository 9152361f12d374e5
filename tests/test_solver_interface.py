"""The VNN-LIB 2.0 solver interface: `verify verify`, `verify supports`, `verify --name`.

Queries of our own over models this file writes (the standard's test suite runs in
benchmarks/vnnlib_satisfactory.py, not here).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier.cli import main

FLOAT = TensorProto.FLOAT


def save_model(path, nodes, inputs, outputs, initializers=(), elem=FLOAT):
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(n, elem, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, elem, s) for n, s in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        # y = relu(2 x - 1) + 0.5, its relu output named "h"
        "relu": save_model(folder / "relu.onnx", [
            helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Sub", ["t", "one"], ["u"]),
            helper.make_node("Relu", ["u"], ["h"]), helper.make_node("Add", ["h", "half"], ["y"])],
            [("x", [1])], [("y", [1])], [const("two", [2.0]), const("one", [1.0]), const("half", [0.5])]),
        # y = a - b, z = a * b: two inputs, two outputs
        "pair": save_model(folder / "pair.onnx", [
            helper.make_node("Sub", ["a", "b"], ["y"]), helper.make_node("Mul", ["a", "b"], ["z"])],
            [("a", [2]), ("b", [2])], [("y", [2]), ("z", [2])]),
        "double": save_model(folder / "double.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                             [("x", [1])], [("y", [1])], elem=TensorProto.DOUBLE),
    }


def decide(capsys, query_path, *networks, extra=()):
    argv = ["verify", str(query_path), *[f"--network={n}" for n in networks], *extra]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def write(tmp_path, text, name="q.vnnlib"):
    path = tmp_path / name
    path.write_text("(vnnlib-version <2.0>)\n" + text)
    return path


RELU = "(declare-network N (declare-input X float32 [1]) (declare-hidden H float32 [1] \"h\") " \
       "(declare-output Y float32 [1]))\n(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0))\n"


@pytest.mark.parametrize("goal,verdict", [
    ("(assert (>= Y[0] 1.6))", "unsat"),          # y <= 1.5
    ("(assert (>= Y[0] 1.5))", "sat"),            # reached at x = 1 only
    ("(assert (> H[0] (+ X[0] 0.01)))", "unsat"),  # 2x - 1 <= x on [0, 1]
    ("(assert (or (<= Y[0] 0.4) (>= (* X[0] Y[0]) 1.4)))", "sat"),
    ("(assert (and (== H[0] 0.0) (>= X[0] 0.6)))", "unsat"),
    ("(assert (!= H[0] 0.0))", "sat"),
])
def test_verdicts_and_the_assignment_of_sat(tmp_path, capsys, models, goal, verdict):
    code, out, _ = decide(capsys, write(tmp_path, RELU + goal), f"N={models['relu']}")
    assert code == 0 and out[0] == verdict
    if verdict == "sat":
        assert out[1] == "X float32 [1]" and out[3] == "H float32 [1]" and out[5] == "Y float32 [1]"
        x, h, y = float(out[2]), float(out[4]), float(out[6])
        assert 0 <= x <= 1 and h == pytest.approx(max(2 * x - 1, 0), abs=1e-6) and y == pytest.approx(h + 0.5)
    else:
        assert len(out) == 1


def test_several_inputs_and_outputs_and_networks_bounded_as_one_graph(tmp_path, capsys, models):
    text = ("(declare-network P (declare-input A float32 [2]) (declare-input B float32 [2]) "
            "(declare-output D float32 [2]) (declare-output M float32 [2]))\n"
            "(declare-network Q (equal-to P) (declare-input A2 float32 [2]) (declare-input B2 float32 [2]) "
            "(declare-output D2 float32 [2]) (declare-output M2 float32 [2]))\n"
            + "".join(f"(assert (>= {v}[{i}] 0.0)) (assert (<= {v}[{i}] 1.0))\n"
                      for v in ("A", "B", "A2", "B2") for i in (0, 1)))
    # D = A - B lies in [-1, 1] for both copies: they differ by 2 at most
    code, out, _ = decide(capsys, write(tmp_path, text + "(assert (>= (- D[0] D2[0]) 2.01))"), f"P={models['pair']}")
    assert (code, out) == (0, ["unsat"])
    # on free inputs it can
    code, out, _ = decide(capsys, write(tmp_path, text + "(assert (>= (- D[0] D2[0]) 1.5))"), f"P={models['pair']}")
    assert code == 0 and out[0] == "sat" and [line for line in out if " [" in line][:2] == ["A float32 [2]",
                                                                                          "B float32 [2]"]
    # a product of two outputs (POLY) and of outputs of different networks
    poly = "(assert (>= (* M[0] M2[1]) 0.99))"
    code, out, _ = decide(capsys, write(tmp_path, text + poly), f"P={models['pair']}")
    assert code == 0 and out[0] == "sat"
    code, out, _ = decide(capsys, write(tmp_path, text + "(assert (>= (* M[0] M2[1]) 1.01))"), f"P={models['pair']}")
    assert (code, out) == (0, ["unsat"])


ERRORS = [
    ([], "no --network NAME=PATH for network N"),
    (["N=relu", "K=relu"], "--network K is not declared by the query"),
    (["N=relu=x"], "no such file"),
    (["N"], "expected NAME=PATH"),
]


@pytest.mark.parametrize("networks,problem", ERRORS, ids=[e[1][:25] for e in ERRORS])
def test_mapping_errors_exit_2_with_one_line_and_no_verdict(tmp_path, capsys, models, networks, problem):
    paths = [n.replace("relu", models["relu"], 1) if n.endswith("relu") else n for n in networks]
    code, out, err = decide(capsys, write(tmp_path, RELU + "(assert (>= Y[0] 1.6))"), *paths)
    assert code == 2 and out == [] and problem in err and len(err.strip().splitlines()) == 1


def test_element_types_must_match_and_be_analysable(tmp_path, capsys, models):
    declared64 = RELU.replace("float32", "float64") + "(assert (>= Y[0] 1.6))"
    code, out, err = decide(capsys, write(tmp_path, declared64), f"N={models['relu']}")
    assert code == 2 and out == [] and "X is declared float64 but the input of" in err and "is float" in err
    half = RELU.replace("float32", "float16") + "(assert (>= Y[0] 1.6))"
    code, out, err = decide(capsys, write(tmp_path, half), f"N={models['relu']}")
    assert code == 2 and out == [] and "cannot analyse soundly" in err and "`real`" in err
    # declared real: the types are not compared (the standard's opt-in), and the query is decided
    real = RELU.replace("float32", "real") + "(assert (>= Y[0] 1.6))"
    assert decide(capsys, write(tmp_path, real), f"N={models['relu']}")[:2] == (0, ["unsat"])
    # a float64 model declared float64
    double = ("(declare-network N (declare-input X float64 [1]) (declare-output Y float64 [1]))\n"
              "(assert (>= X[0] -1.0)) (assert (<= X[0] 1.0)) (assert (>= Y[0] 0.5))")
    code, out, _ = decide(capsys, write(tmp_path, double), f"N={models['double']}")
    assert code == 0 and out[0] == "sat" and out[1] == "X float64 [1]"


def test_hidden_tensor_that_the_model_lacks(tmp_path, capsys, models):
    code, out, err = decide(capsys, write(tmp_path, RELU.replace('"h"', '"nowhere"') + "(assert (>= Y[0] 1.6))"),
                            f"N={models['relu']}")
    assert code == 2 and out == [] and 'the hidden tensor "nowhere" of H is not computed by' in err


@pytest.mark.parametrize("element,verdicts", [("real", {"unsat"}), ("float32", {"timed-out", "unknown"})])
def test_a_query_over_reals_is_decided_in_exact_arithmetic(tmp_path, capsys, element, verdicts):
    # softmax lies in [0, 1] exactly; onnxruntime's rounding could take it past either end, so
    # over float32 the bounds keep an allowance that no strict comparison at 0 or 1 can beat
    path = save_model(tmp_path / "softmax.onnx", [helper.make_node("Softmax", ["x"], ["y"], axis=0)],
                      [("x", [2])], [("y", [2])])
    text = (f"(declare-network N (declare-input X {element} [2]) (declare-output Y {element} [2]))\n"
            "(assert (and (>= X[0] -1000.0) (<= X[0] 1000.0))) (assert (and (>= X[1] -1000.0) (<= X[1] 1000.0)))\n"
            "(assert (or (< Y[0] 0.0) (> Y[0] 1.0)))")
    code, out, _ = decide(capsys, write(tmp_path, text), f"N={path}", extra=("--timeout", "2"))
    assert code == 0 and out[0] in verdicts and len(out) == 1


def test_unsupported_operator_is_unknown(tmp_path, capsys):
    path = save_model(tmp_path / "cumsum.onnx", [helper.make_node("CumSum", ["x", "axis"], ["y"])],
                      [("x", [2])], [("y", [2])], [numpy_helper.from_array(np.array(0, dtype=np.int64), "axis")])
    text = ("(declare-network N (declare-input X float32 [2]) (declare-output Y float32 [2]))\n"
            "(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0)) (assert (>= X[1] 0.0)) (assert (<= X[1] 1.0))\n"
            "(assert (>= Y[1] 3.0))")
    code, out, err = decide(capsys, write(tmp_path, text), f"N={path}")
    assert (code, out) == (0, ["unknown"]) and "CumSum" in err and "(-inf, inf)" in err


@pytest.mark.parametrize("flag,expected", [
    ("--onnx-opset-versions", ["7", "20"]),
    ("--vnnlib-versions", ["2.0", "2.0"]),
    ("--serialise-assignments", ["false"]),
    ("--multiple-network-theories", ["SNET", "MENET", "MINET", "MNET"]),
    ("--arithmetic-complexity-theories", ["BND", "OUTC", "LIN", "POLY"]),
    ("--hidden-node-theories", ["NH", "H"]),
    ("--multiple-input-output-theories", ["SIO", "MIO"]),
])
def test_supports_flags(capsys, flag, expected):
    assert main(["supports", flag]) == 0
    assert capsys.readouterr().out == "".join(f"{line}\n" for line in expected)


def test_supported_operators_are_the_rule_table(capsys):
    from verifier.bounds import supported_onnx_ops

    assert main(["supports", "--onnx-operators"]) == 0
    listed = set(capsys.readouterr().out.split())
    assert supported_onnx_ops() <= listed and {"Where", "Equal", "Greater", "Cast", "Gemm", "Relu"} <= listed


def test_name_and_timeout_from_the_console_script(tmp_path, models):
    name = subprocess.run([sys.executable, "-c", "from verifier.cli import entry; entry()", "--name"],
                          capture_output=True, text=True, check=True)
    assert name.stdout.count("\n") == 1 and "verifier" in name.stdout
    query = write(tmp_path, RELU + "(assert (>= Y[0] 1.5))")
    run = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'verify'; from verifier.cli import entry; "
                          "entry()", "verify", str(query), "--network", f"N={models['relu']}", "--timeout", "30.0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.splitlines()[0] == "sat"


def test_a_bad_query_exits_2_with_one_line(tmp_path, capsys, models):
    code, out, err = decide(capsys, write(tmp_path, RELU + "(assert (>= Y[0] (exp X[0])))"), f"N={models['relu']}")
    assert code == 2 and out == [] and err.count("\n") == 1 and "q.vnnlib:4: unknown operator 'exp'" in err


def test_valid_mutants_get_sound_verdicts(tmp_path, capsys, models):
    """Random comparisons of y = relu(2x - 1) + 0.5 on x in [0, 1], whose range is exactly
    [0.5, 1.5]: every verdict agrees with that range (unknown would be allowed, but none occurs)."""
    rng = np.random.default_rng(0)
    exact = {"<=": lambda t: t >= 0.5, "<": lambda t: t > 0.5, ">=": lambda t: t <= 1.5, ">": lambda t: t < 1.5}
    verdicts = []
    for _ in range(16):
        op = rng.choice(list(exact))
        threshold = float(rng.choice([0.25, 0.4999, 0.5, 0.7, 1.3, 1.5, 1.5001, 2.0]))
        query = write(tmp_path, RELU + f"(assert ({op} Y[0] {threshold}))")
        code, out, _ = decide(capsys, query, f"N={models['relu']}")
        assert code == 0
        verdicts.append(out[0])
        if out[0] != "unknown":
            assert out[0] == ("sat" if exact[op](threshold) else "unsat"), (op, threshold)
    assert "sat" in verdicts and "unsat" in verdicts
