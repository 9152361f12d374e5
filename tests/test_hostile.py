"""Hostile input: mutated VNN-LIB files and corrupt, truncated or unsupported ONNX files.

Invalid input must give exit code 2 and one line on stderr naming the file; input that stays
valid must get a sound answer (a sat only with a counterexample that `verify check` confirms,
an unsat only where no sampled point violates the property). Never a traceback or a hang.
"""

from __future__ import annotations

import gzip
import random

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import EXAMPLES
from verifier import cli
from verifier.vnnlib import parse_file

MODEL = EXAMPLES / "classifier.onnx"
SEEDS = [EXAMPLES / "classifier_radius_0.02.vnnlib", EXAMPLES / "classifier_radius_0.5.vnnlib"]
ALPHABET = "()<>=XY_0123456789.-+e ;\t\n"
TOKENS = ["(", ")", "and", "or", "assert", "<=", ">=", "<", "=", "X_0", "X_9", "Y_2", "Y_7", "-1e400",
          "nan", "1e-320", "declare-const", "Real", "Int", "not", "*", "+", "0", "99999999999"]


def mutate(text: str, rng: random.Random) -> str:
    kind = rng.randrange(9)
    position = rng.randrange(len(text) + 1)
    lines = text.splitlines()
    if kind == 0:
        return text[:position] + text[position + 1:]
    if kind == 1:
        return text[:position] + rng.choice(ALPHABET) + text[position:]
    if kind == 2:
        return text[:position]
    if kind == 3 and lines:
        del lines[rng.randrange(len(lines))]
        return "\n".join(lines)
    if kind == 4 and lines:
        lines.insert(rng.randrange(len(lines)), rng.choice(lines))
        return "\n".join(lines)
    if kind == 5:
        words = text.split(" ")
        words[rng.randrange(len(words))] = rng.choice(TOKENS)
        return " ".join(words)
    if kind == 6:
        return text.replace("<=", rng.choice([">=", "<", "=", "xor", "<= <="]), 1)
    if kind == 7:
        numbers = [w for w in text.replace("(", " ").replace(")", " ").split() if w[:1].isdigit() or w[:1] == "-"]
        if numbers:
            return text.replace(rng.choice(numbers), rng.choice(["5", "-5", "1e30", "0.3.3", "--1", "inf"]), 1)
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(["(assert (or))", "(assert)", "(assert (<= Y_0))",
                                                         "(assert (and (<= X_0 X_1)))", "(check-sat)", ")("]))
    return "\n".join(lines)


def verify(capsys, *argv):
    code = cli.main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_refusal(err: str, path) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith(str(path)), err


def assert_sound(capsys, prop_path, out: str, tmp_path) -> str:
    verdict = out.strip().splitlines()[-1]
    assert verdict in ("sat", "unsat", "unknown", "timeout")
    if verdict == "sat":
        ce = tmp_path / "ce.txt"
        ce.write_text("sat\n" + "\n".join(out.strip().splitlines()[:-1]))
        assert cli.main(["check", str(MODEL), str(prop_path), str(ce)]) == 0
        capsys.readouterr()
    if verdict == "unsat":
        prop = parse_file(prop_path)
        session = onnxruntime.InferenceSession(str(MODEL))
        rng = np.random.default_rng(0)
        for case in prop.cases:
            xs = rng.uniform(case.lower, case.upper, size=(300, 4)).astype(np.float32)
            ys = np.concatenate([session.run(None, {"input": x.reshape(1, 4)})[0] for x in xs]).astype(np.float64)
            for disjunct in case.disjuncts:
                width = disjunct.matrix.shape[1]
                violated = np.all(ys[:, :width] @ disjunct.matrix.T <= disjunct.offset, axis=1)
                assert not violated.any(), f"unsat but a sampled point violates {prop_path}"
    return verdict


def test_mutated_properties(capsys, tmp_path):
    rng = random.Random(2024)
    valid = 0
    total = 240
    for number in range(total):
        seed_text = SEEDS[number % 2].read_text()
        text = seed_text
        for _ in range(rng.randint(1, 3)):
            text = mutate(text, rng)
        path = tmp_path / f"mutant_{number}.vnnlib"
        path.write_text(text)
        code, out, err = verify(capsys, MODEL, path)
        assert code in (0, 2), (text, err)
        if code == 2:
            assert_clean_refusal(err, path)
            assert out == ""
        else:
            assert_sound(capsys, path, out, tmp_path)
            valid += 1
    print(f"\n{valid} of {total} mutated properties stayed valid and were answered soundly")
    assert 0 < valid < total


def _onnx_variants(tmp_path) -> list:
    raw = MODEL.read_bytes()
    rng = random.Random(7)
    files = []

    def add(name: str, data: bytes) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        files.append(path)

    add("empty.onnx", b"")
    add("text.onnx", b"this is not a model\n")
    add("garbage.onnx", bytes(rng.randrange(256) for _ in range(500)))
    add("garbage.onnx.gz", gzip.compress(bytes(rng.randrange(256) for _ in range(500))))
    add("truncated.onnx.gz", gzip.compress(raw)[:100])
    for i in range(20):
        add(f"truncated_{i}.onnx", raw[: rng.randrange(1, len(raw))])
    for i in range(20):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        add(f"flipped_{i}.onnx", bytes(data))
    for op in ("Erf", "Floor", "Round", "HardSwish", "Celu", "Mish"):
        add(f"unsupported_{op}.onnx", _single_op_model(op).SerializeToString())
    add("two_inputs.onnx", _two_input_model().SerializeToString())
    add("int_input.onnx", _typed_model(TensorProto.INT64).SerializeToString())
    add("half_input.onnx", _typed_model(TensorProto.FLOAT16).SerializeToString())
    return files


def _single_op_model(op: str) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node(op, ["a"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _two_input_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Add", ["x", "z"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _typed_model(elem_type: int) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem_type, [1, 4])],
                              [helper.make_tensor_value_info("y", elem_type, [1, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_corrupt_and_unsupported_models(capsys, tmp_path):
    files = _onnx_variants(tmp_path)
    assert len(files) >= 50
    refused = 0
    for path in files:
        code, out, err = verify(capsys, path, SEEDS[1])
        assert code in (0, 2), (path, err)
        if code == 2:
            assert_clean_refusal(err, path)
            refused += 1
        else:  # a byte flip inside a weight keeps the model valid: the answer must still be sound
            verdict = out.strip().splitlines()[-1]
            assert verdict in ("sat", "unsat", "unknown", "timeout")
            if verdict == "sat":
                ce = tmp_path / "ce.txt"
                ce.write_text("sat\n" + "\n".join(out.strip().splitlines()[:-1]))
                assert cli.main(["check", str(path), str(SEEDS[1]), str(ce)]) == 0
                capsys.readouterr()
    print(f"\n{refused} of {len(files)} damaged models refused with one line, the rest answered soundly")
    assert refused >= 30


def test_unsupported_operator_is_named_and_the_instance_still_answered(capsys, tmp_path):
    path = tmp_path / "unsupported_Erf.onnx"
    path.write_bytes(_single_op_model("Erf").SerializeToString())
    code, out, err = verify(capsys, path, SEEDS[0])
    assert code == 0 and "unsupported operators: Erf" in err and "the attack still runs" in err
    assert out.strip().splitlines()[-1] in ("sat", "unknown", "timeout")


def test_operator_without_a_converter_is_refused_in_one_line(capsys, tmp_path):
    path = tmp_path / "unsupported_Hardmax.onnx"
    path.write_bytes(_single_op_model("Hardmax").SerializeToString())
    code, _, err = verify(capsys, path, SEEDS[0])
    assert code == 2 and "unsupported operators: Hardmax" in err
    assert_clean_refusal(err, path)


def _classifier_property(tmp_path, name: str, x0_bounds: str, output: str):
    """A property of the example classifier: X_0 as given, X_1..X_3 in [-1, 1], one output assert."""
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(4)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(3)) + \
        "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(1, 4)) + \
        f"{x0_bounds}\n(assert {output})\n"
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("bounds,literal,problem", [
    ("(assert (>= X_0 -1))\n(assert (<= X_0 1e400))", "1e400", "overflows float64"),
    ("(assert (>= X_0 -1))\n(assert (<= X_0 1e39))", "1e39", "float32"),   # the classifier is float32
    ("(assert (>= X_0 -1e39))\n(assert (<= X_0 1))", "-1e39", "float32"),
])
def test_numbers_that_overflow_the_model_dtype_are_refused_with_one_line(capsys, tmp_path, bounds, literal, problem):
    # Before: 1e400 was inf (so "X_0 has no upper bound", at the wrong line), 1e39 became an
    # infinite float32 box and the run ended in an internal error (nan in the first MatMul).
    path = _classifier_property(tmp_path, "big.vnnlib", bounds, "(<= Y_0 Y_1)")
    code, out, err = verify(capsys, MODEL, path)
    assert code == 2 and out == "", err
    assert_clean_refusal(err, path)
    line = 14 if literal.startswith("-") else 15
    assert err.startswith(f"{path}:{line}: ") and literal in err and problem in err, err


@pytest.mark.parametrize("output,verdict", [("(>= Y_0 1e39)", "unsat"), ("(<= Y_0 1e39)", "sat")])
def test_large_output_thresholds_beyond_float32_are_kept(capsys, tmp_path, output, verdict):
    path = _classifier_property(tmp_path, "threshold.vnnlib", "(assert (>= X_0 -1))\n(assert (<= X_0 1))", output)
    code, out, err = verify(capsys, MODEL, path, "--timeout", "60")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == verdict


def test_a_property_whose_every_input_box_is_empty_is_unsat(capsys, tmp_path):
    # Before: refused (exit 2) with "input X_0 has lower bound 2.0 above its upper bound 1.0".
    bounds = "(assert (or (and (>= X_0 2) (<= X_0 1)) (and (>= X_0 0.5) (<= X_0 -0.5))))"
    path = _classifier_property(tmp_path, "empty.vnnlib", bounds, "(<= Y_0 Y_1)")
    code, out, err = verify(capsys, MODEL, path, "--timeout", "60")
    assert (code, out.strip().splitlines()[-1]) == (0, "unsat"), err


def test_empty_input_boxes_are_dropped_and_the_others_answered(capsys, tmp_path):
    bounds = "(assert (or (and (>= X_0 2) (<= X_0 1)) (and (>= X_0 -0.01) (<= X_0 0.01))))"
    results = tmp_path / "ce.txt"
    path = _classifier_property(tmp_path, "some_empty.vnnlib", bounds, "(<= Y_0 1e30)")  # any point violates it
    code, out, err = verify(capsys, MODEL, path, "--timeout", "60", "--results", results)
    assert (code, out.strip().splitlines()[-1]) == (0, "sat"), err
    assert verify(capsys, "check", MODEL, path, results)[0] == 0
    x0 = float(results.read_text().split("(X_0 ")[1].split(")")[0])
    assert -0.01 <= x0 <= 0.01  # from the non-empty box
    path = _classifier_property(tmp_path, "some_empty_unsat.vnnlib", bounds, "(>= Y_0 1e30)")
    code, out, err = verify(capsys, MODEL, path, "--timeout", "60")
    assert (code, out.strip().splitlines()[-1]) == (0, "unsat"), err
