"""Proofs hold for the network that onnxruntime runs, rounding included.

Each model here is 0 (or nearly) over the reals, while its floating-point evaluation is not: a
narrowing Cast, or a sum that cancels catastrophically. The truth is known by construction and
re-established by evaluating every float32 of a small box on onnxruntime. A violated property must
come out `sat` (with a checked counterexample) or undecided, never `unsat`.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier import cli
from verifier.output_bounds import output_bounds

ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16}


def _save(path, nodes, dtype, constants=()) -> str:
    kind = ONNX_TYPES[dtype]
    initializers = [numpy_helper.from_array(np.asarray(v, dtype=t).reshape(1, 1), n) for n, v, t in constants]
    graph = helper.make_graph(nodes, "rounding", [helper.make_tensor_value_info("x", kind, [1, 1])],
                              [helper.make_tensor_value_info("y", kind, [1, 1])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def round_trip_model(path, dtype, narrow) -> str:
    """y = cast_back(cast_narrow(x)) - x: 0 over the reals, the rounding to `narrow` in floats."""
    nodes = [helper.make_node("Cast", ["x"], ["n"], to=ONNX_TYPES[narrow]),
             helper.make_node("Cast", ["n"], ["w"], to=ONNX_TYPES[dtype]),
             helper.make_node("Sub", ["w", "x"], ["y"])]
    return _save(path, nodes, dtype)


def narrow_arithmetic_model(path, shift: float) -> str:
    """y = cast32((cast16(x) + shift) - shift) - x, the additions done in float16."""
    nodes = [helper.make_node("Cast", ["x"], ["n"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["n", "c"], ["a"]), helper.make_node("Sub", ["a", "c"], ["b"]),
             helper.make_node("Cast", ["b"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["w", "x"], ["y"])]
    return _save(path, nodes, np.float32, [("c", shift, np.float16)])


def cancelling_model(path, dtype, shift: float) -> str:
    """y = ((x + shift) - shift) - x: 0 over the reals, round-to-spacing(shift) minus x in floats."""
    nodes = [helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Sub", ["a", "c"], ["b"]),
             helper.make_node("Sub", ["b", "x"], ["y"])]
    return _save(path, nodes, dtype, [("c", shift, dtype)])


def violated_property(path, low: float, high: float, threshold: float) -> str:
    """The property fails where y >= threshold for some x in [low, high]."""
    path.write_text(f"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 {low!r}))\n"
                    f"(assert (<= X_0 {high!r}))\n(assert (>= Y_0 {threshold!r}))\n")
    return str(path)


def every_float(low: float, high: float, dtype, most: int = 1 << 16) -> np.ndarray:
    """Every value of `dtype` in [low, high] (at most `most` of them, else an even spread)."""
    start, stop = dtype(low), dtype(high)
    bits = {np.float32: np.int32, np.float64: np.int64}[dtype]
    first, last = np.array(start).view(bits), np.array(stop).view(bits)
    count = int(last - first) + 1
    step = max(1, count // most)
    return np.arange(int(first), int(last) + 1, step, dtype=bits).view(dtype)


def onnxruntime_outputs(model: str, xs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.array([session.run(None, {"x": x.reshape(1, 1)})[0].item() for x in xs])


def assert_never_proved(capsys, tmp_path, model: str, prop: str, timeout: str = "20", *options: str) -> str:
    results = tmp_path / "results.txt"
    code = cli.main([model, prop, "--timeout", timeout, "--results", str(results), *options])
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and verdict != "unsat", "a violated property was proved"
    if verdict == "sat":
        assert cli.main(["check", model, prop, str(results)]) == 0, capsys.readouterr().out
        capsys.readouterr()
    return verdict


# (input dtype, narrow dtype, box, threshold): every box holds values whose rounding reaches the threshold.
CASTS = [(np.float32, np.float16, 1000.0, 1001.0, 0.1), (np.float32, np.float16, 3000.0, 3004.0, 0.5),
         (np.float32, np.float16, 0.3, 0.31, 5e-5), (np.float64, np.float32, 1e8, 1e8 + 16, 1.0),
         (np.float64, np.float32, 0.1, 0.1 + 1e-6, 1e-9)]


@pytest.mark.parametrize("dtype, narrow, low, high, threshold", CASTS)
def test_a_narrowing_cast_is_not_the_identity(capsys, tmp_path, dtype, narrow, low, high, threshold):
    model = round_trip_model(tmp_path / "cast.onnx", dtype, narrow)
    values = onnxruntime_outputs(model, every_float(low, high, dtype, 4096))
    assert values.max() >= threshold  # the truth, on onnxruntime: the property is violated
    prop = violated_property(tmp_path / "p.vnnlib", low, high, threshold)
    assert assert_never_proved(capsys, tmp_path, model, prop) == "sat"


def test_arithmetic_in_float16_after_a_cast(capsys, tmp_path):
    # Whatever onnxruntime computes for the float16 additions, its largest output on the box is
    # reached, so the property "y >= that largest output" is violated there.
    model = narrow_arithmetic_model(tmp_path / "half.onnx", 1024.0)
    xs = every_float(0.0, 2.0, np.float32, 4096)
    values = onnxruntime_outputs(model, xs)
    assert values.max() > 0
    prop = violated_property(tmp_path / "p.vnnlib", 0.0, 2.0, float(values.max()))
    assert_never_proved(capsys, tmp_path, model, prop)


@pytest.mark.parametrize("dtype, shift, low, high, threshold", [
    (np.float32, 2.0 ** 23, 0.0, 10.0, 0.3), (np.float32, 2.0 ** 23, 100.25, 100.75, 0.2),
    (np.float32, 2.0 ** 20, 0.0, 1.0, 0.05), (np.float32, 2.0 ** 26, 0.0, 64.0, 2.0),
    (np.float64, 2.0 ** 52, 0.0, 10.0, 0.3)])
def test_catastrophic_cancellation_is_not_proved_by_the_float64_recheck(capsys, tmp_path, dtype, shift, low, high,
                                                                          threshold):
    model = cancelling_model(tmp_path / "cancel.onnx", dtype, shift)
    values = onnxruntime_outputs(model, every_float(low, high, dtype, 4096))
    assert values.max() >= threshold
    assert_never_proved(capsys, tmp_path, model, violated_property(tmp_path / "p.vnnlib", low, high, threshold))


# The attack looks at one random point and runs no PGD: what is left to decide is the proof.
NO_ATTACK = ("--set", "attack.random_samples=1", "--set", "attack.restarts=0")


@pytest.mark.parametrize("dtype, shift, high, threshold", [(np.float32, 2.0 ** 23, 10.0, 0.49),
                                                           (np.float32, 2.0 ** 20, 1.0, 0.06),
                                                           (np.float64, 2.0 ** 52, 10.0, 0.49)])
def test_catastrophic_cancellation_is_not_proved_when_the_attack_misses(capsys, tmp_path, dtype, shift, high,
                                                                        threshold):
    model = cancelling_model(tmp_path / "cancel.onnx", dtype, shift)
    assert onnxruntime_outputs(model, every_float(0.0, high, dtype, 1 << 16)).max() >= threshold
    prop = violated_property(tmp_path / "p.vnnlib", 0.0, high, threshold)
    assert_never_proved(capsys, tmp_path, model, prop, "10", *NO_ATTACK)


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_bounds_hold_every_float32_onnxruntime_computes_in_a_small_box(tmp_path, method):
    low, high = 0.5, 0.5 + 4096 * 2.0 ** -24  # 4097 consecutive float32 values
    for model in (cancelling_model(tmp_path / "c.onnx", np.float32, 2.0 ** 23),
                  round_trip_model(tmp_path / "r.onnx", np.float32, np.float16)):
        xs = every_float(low, high, np.float32)
        ys = onnxruntime_outputs(model, xs)
        report = output_bounds(model, violated_property(tmp_path / "p.vnnlib", low, high, 0.0), method)
        lower, upper = report["cases"][0]["lower"][0], report["cases"][0]["upper"][0]
        assert lower <= ys.min() and ys.max() <= upper, (model, lower, upper, ys.min(), ys.max())
