"""The `verify` command in-process: verdicts, results files, exit codes, `check` and `bounds`."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest

from tests.conftest import EXAMPLES, shared_or_skip
from verifier import cli
from verifier.vnnlib import parse_file

MODEL = str(EXAMPLES / "classifier.onnx")
SAFE = str(EXAMPLES / "classifier_radius_0.02.vnnlib")
UNSAFE = str(EXAMPLES / "classifier_radius_0.5.vnnlib")


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_example_verdicts_and_results_file(capsys, tmp_path):
    code, out, _ = run(capsys, MODEL, SAFE, "--timeout", "60")
    assert (code, last_line(out)) == (0, "unsat")
    results = tmp_path / "out.txt"
    code, out, _ = run(capsys, MODEL, UNSAFE, "--timeout", "60", "--results", str(results))
    assert (code, last_line(out)) == (0, "sat")
    text = results.read_text()
    assert text.startswith("sat\n((X_0 ") and "(Y_2 " in text
    assert run(capsys, "check", MODEL, UNSAFE, str(results))[0] == 0


def test_the_printed_counterexample_violates_the_property(capsys):
    code, out, _ = run(capsys, MODEL, UNSAFE)
    pairs = dict(line.strip(" ()").split() for line in out.splitlines()[:-1])
    x = np.array([float(pairs[f"X_{i}"]) for i in range(4)], dtype=np.float32)
    prop = parse_file(UNSAFE)
    case = prop.cases[0]
    assert np.all(x >= case.lower) and np.all(x <= case.upper)
    y = onnxruntime.InferenceSession(MODEL).run(None, {"input": x.reshape(1, 4)})[0].reshape(-1).astype(float)
    assert any(np.all(d.matrix @ y <= d.offset) for d in case.disjuncts)


def test_check_rejects_tampered_counterexamples(capsys, tmp_path):
    results = tmp_path / "ce.txt"
    run(capsys, MODEL, UNSAFE, "--results", str(results))
    lines = results.read_text().splitlines()
    tampered_y = [line if not line.strip().startswith("(Y_0") else " (Y_0 1000.0)" for line in lines]
    bad = tmp_path / "bad_y.txt"
    bad.write_text("\n".join(tampered_y))
    code, out, _ = run(capsys, "check", MODEL, UNSAFE, str(bad))
    assert code == 1 and "differ" in out
    outside = [line if not line.startswith("((X_0") else "((X_0 5.0)" for line in lines]
    bad.write_text("\n".join(outside))
    assert run(capsys, "check", MODEL, UNSAFE, str(bad))[0] == 1
    bad.write_text("sat\n((X_0 0.1))")
    code, _, err = run(capsys, "check", MODEL, UNSAFE, str(bad))
    assert code == 2 and "none missing" in err


def test_user_errors_exit_2_with_one_line(capsys, tmp_path):
    broken = tmp_path / "broken.vnnlib"
    broken.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)")
    results = tmp_path / "r.txt"
    code, out, err = run(capsys, MODEL, str(broken), "--results", str(results))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"{broken}:2: ")
    assert results.read_text() == "error\n"
    code, _, err = run(capsys, str(tmp_path / "missing.onnx"), SAFE)
    assert code == 2 and "missing.onnx: cannot read the file" in err
    code, _, err = run(capsys, MODEL, str(EXAMPLES / "make_examples.py"))
    assert code == 2 and err.count("\n") == 1


def test_property_larger_than_the_model_is_a_user_error(capsys, tmp_path):
    prop = tmp_path / "p.vnnlib"
    prop.write_text("".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n"
                            for i in range(5)) + "(declare-const Y_0 Real)\n(assert (<= Y_0 0))\n")
    code, _, err = run(capsys, MODEL, str(prop))
    assert code == 2 and "X_4 is beyond the model's input size" in err


def test_internal_errors_print_error_and_exit_1(capsys, monkeypatch):
    import verifier.verify

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(verifier.verify, "verify_instance", explode)
    code, out, err = run(capsys, MODEL, SAFE)
    assert (code, last_line(out)) == (1, "error")
    assert "Traceback" not in err and "boom" in err
    code, out, err = run(capsys, MODEL, SAFE, "-v")
    assert code == 1 and "Traceback" in err


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"verify {version('vnn-verifier')}"


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_bounds_json_contains_sampled_outputs(capsys, method):
    code, out, _ = run(capsys, "bounds", MODEL, UNSAFE, "--method", method, "--json")
    report = json.loads(out)
    assert code == 0 and report["method"] == method and report["seconds"] >= 0
    (case,) = report["cases"]
    session = onnxruntime.InferenceSession(MODEL)
    rng = np.random.default_rng(1)
    for _ in range(200):
        x = rng.uniform(case["input_lower"], case["input_upper"]).astype(np.float32)
        y = session.run(None, {"input": x.reshape(1, 4)})[0].reshape(-1)
        assert np.all(y >= np.array(case["lower"]) - 1e-5) and np.all(y <= np.array(case["upper"]) + 1e-5)


def test_crown_bounds_are_never_looser_than_ibp(capsys):
    ibp = json.loads(run(capsys, "bounds", MODEL, UNSAFE, "--method", "ibp", "--json")[1])["cases"][0]
    crown = json.loads(run(capsys, "bounds", MODEL, UNSAFE, "--method", "crown", "--json")[1])["cases"][0]
    assert np.all(np.array(crown["lower"]) >= np.array(ibp["lower"]) - 1e-6)
    assert np.all(np.array(crown["upper"]) <= np.array(ibp["upper"]) + 1e-6)


def test_the_five_test_instances(capsys):
    root = shared_or_skip() / "test"
    expected = {"test_nano": "unsat", "test_tiny": "unsat", "test_small": "unsat", "test_sat": "sat",
                "test_unsat": "unsat"}
    for line in (root / "test_instances.csv").read_text().splitlines():
        onnx_name, vnnlib_name, _ = line.split(",")
        code, out, _ = run(capsys, str(root / onnx_name), str(root / vnnlib_name), "--family", "test",
                           "--timeout", "60")
        assert (code, last_line(out)) == (0, expected[onnx_name.removesuffix(".onnx")]), onnx_name
