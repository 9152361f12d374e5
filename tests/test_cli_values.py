"""What a user types is checked before any work: one line on stderr and exit 2 for each bad value;
--help lists every sub-command; --json, -v/-q, python -m verifier, short sat output, `verify check`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import REPO
from tests.test_cli import MODEL, SAFE, UNSAFE, run
from verifier import cli
from verifier.settings import known_families


def one_line_user_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, (code, out, err)
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon", ""])
def test_bad_timeouts_are_user_errors(capsys, value):
    code, out, err = run(capsys, MODEL, SAFE, "--timeout", value)
    one_line_user_error(code, out, err, "--timeout", "must be a positive number of seconds", f"'{value}'")


def test_an_infinite_timeout_means_no_limit_with_the_watchdog_path():
    # Through the console entry point, which starts the watchdog for a finite limit.
    done = subprocess.run([sys.executable, "-m", "verifier", MODEL, SAFE, "--timeout", "inf"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "unsat") and done.stderr == "", done.stderr


def test_the_process_ends_with_its_verdict_before_the_watchdog(tmp_path):
    # a teardown that outlives the watchdog's grace (torch's can take a second; here an exit
    # handler of 30 s) must not run: the run would be killed after its verdict and print `timeout` too
    results = tmp_path / "results.txt"
    script = ("import atexit, sys, time; atexit.register(time.sleep, 30); from verifier.cli import entry; "
              f"sys.argv = ['verify', {MODEL!r}, {SAFE!r}, '--timeout', '6', '--results', {str(results)!r}]; entry()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert (done.returncode, done.stdout) == (0, "unsat\n"), done.stderr
    assert results.read_text().strip() == "unsat"


@pytest.mark.parametrize("assignment, allowed", [
    ("alpha.iterations=abc", "an integer >= 0"), ("alpha.iterations=-3", "an integer >= 0"),
    ("branch.batch=0", "an integer >= 1"), ("alpha.intermediate=maybe", "true or false"),
    ("branch.split=beta", "one of auto, relu, input, none"), ("attack.time_share=2", "a number >= 0 and <= 1")])
def test_bad_settings_are_user_errors_before_any_work(capsys, monkeypatch, assignment, allowed):
    import verifier.verify

    monkeypatch.setattr(verifier.verify, "verify_instance", lambda *a, **k: pytest.fail("work started"))
    key, _, value = assignment.partition("=")
    code, out, err = run(capsys, MODEL, SAFE, "--set", assignment)
    one_line_user_error(code, out, err, key, value, allowed)


def test_an_unknown_family_is_a_warning_naming_the_known_ones(capsys):
    code, out, err = run(capsys, MODEL, SAFE, "--family", "nosuchfamily")
    assert (code, out.strip()) == (0, "unsat")
    assert "warning: --family nosuchfamily" in err and all(name in err for name in known_families())
    code, out, err = run(capsys, MODEL, SAFE, "--family", "nosuchfamily", "-q")
    assert (code, out.strip(), err) == (0, "unsat", "")


def test_a_results_file_that_cannot_be_written_is_refused_before_the_run(capsys, monkeypatch, tmp_path):
    import verifier.verify

    monkeypatch.setattr(verifier.verify, "verify_instance", lambda *a, **k: pytest.fail("work started"))
    code, out, err = run(capsys, MODEL, SAFE, "--results", "/nonexistent/r.txt")
    one_line_user_error(code, out, err, "--results", "/nonexistent/r.txt", "does not exist")
    code, out, err = run(capsys, MODEL, SAFE, "--results", str(tmp_path))
    one_line_user_error(code, out, err, "is a folder")


def test_a_settings_file_is_checked_before_the_run(capsys, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("mnistfc:\n  alpha:\n    iterations: -1\n")
    code, out, err = run(capsys, MODEL, SAFE, "--settings", str(path), "--family", "mnistfc")
    one_line_user_error(code, out, err, str(path), "alpha.iterations", "-1")
    code, out, err = run(capsys, MODEL, SAFE, "--settings", str(tmp_path / "none.yaml"))
    one_line_user_error(code, out, err, "--settings", "none.yaml")


def test_suite_report_with_an_unwritable_plot_is_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "suite-report", str(tmp_path), "--plot", "/nonexistent/x.png")
    one_line_user_error(code, out, err, "--plot", "/nonexistent/x.png")


def test_bounds_on_cuda_without_a_gpu_is_a_user_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    code, out, err = run(capsys, "bounds", MODEL, SAFE, "--device", "cuda")
    one_line_user_error(code, out, err, "--device cuda", "no CUDA device")
    code, out, err = run(capsys, MODEL, SAFE, "--device", "cuda")
    one_line_user_error(code, out, err, "--device cuda")


def test_help_lists_every_sub_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    listed = [line.split()[1] for line in out.splitlines() if line.startswith("  verify ")]
    assert listed == ["check", "bounds", "settings", "suite", "suite-report", "verify", "supports"]
    for command in listed:
        assert run(capsys, command, "--help")[0] == 0


def test_python_dash_m_verifier_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "verifier", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0 and "verify suite-report" in done.stdout


def test_json_is_one_object_on_the_last_line(capsys, tmp_path):
    results = tmp_path / "r.txt"
    code, out, _ = run(capsys, MODEL, UNSAFE, "--json", "--results", str(results), "--timeout", "60")
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and report["verdict"] == "sat" and report["decided_by"] == "attack"
    assert report["counterexample"] == str(results) and results.read_text().startswith("sat\n")
    assert {"load", "ibp", "attack"} <= set(report["timings"]) and report["version"] == cli.__version__
    code, out, _ = run(capsys, MODEL, SAFE, "--json")
    assert json.loads(out)["verdict"] == "unsat" and json.loads(out)["counterexample"] is None


def test_verbose_logs_progress_and_quiet_logs_nothing(capsys):
    _, _, err = run(capsys, MODEL, SAFE, "-v")
    assert "loaded" in err and "ibp: 1/1 boxes proved" in err
    _, _, err = run(capsys, MODEL, SAFE, "-q")
    assert err == ""


def _wide_model(path, inputs: int = 784) -> None:
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [inputs, 2], rng.normal(size=(inputs, 2)).astype(np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "wide",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_a_sat_on_many_inputs_prints_a_summary_and_the_file_holds_everything(capsys, tmp_path):
    model, prop, results = tmp_path / "wide.onnx", tmp_path / "p.vnnlib", tmp_path / "r.txt"
    _wide_model(model)
    lines = [f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(784)]
    prop.write_text("".join(lines) + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(assert (<= Y_0 Y_1))\n")
    code, out, _ = run(capsys, str(model), str(prop), "--results", str(results))
    assert code == 0 and out.strip().splitlines()[-1] == "sat"
    assert len(out.splitlines()) <= 3 and "784 inputs" in out and f"full assignment in {results}" in out
    assert results.read_text().count("(X_") == 784
    code, out, _ = run(capsys, str(model), str(prop))
    assert "--results FILE writes the full assignment" in out and len(out.splitlines()) <= 3


def test_check_says_valid_and_separates_errors_from_invalid(capsys, monkeypatch, tmp_path):
    results = tmp_path / "r.txt"
    run(capsys, MODEL, UNSAFE, "--results", str(results))
    code, out, _ = run(capsys, "check", MODEL, UNSAFE, str(results))
    assert code == 0 and out.startswith("the counterexample is valid")
    tampered = re.sub(r"\(Y_0 [^)]*\)", "(Y_0 100.0)", results.read_text())
    (tmp_path / "bad.txt").write_text(tampered)
    code, out, _ = run(capsys, "check", MODEL, UNSAFE, str(tmp_path / "bad.txt"))
    assert code == 1 and out.startswith("the counterexample is invalid")
    code, out, err = run(capsys, "check", MODEL, UNSAFE, str(tmp_path / "missing.txt"))
    one_line_user_error(code, out, err, "missing.txt")
    import verifier.check

    monkeypatch.setattr(verifier.check, "check_counterexample", lambda *a: 1 / 0)
    code, out, err = run(capsys, "check", MODEL, UNSAFE, str(results))
    assert code == cli.CHECK_INTERNAL_ERROR and "internal error: ZeroDivisionError" in err and code not in (0, 1, 2)
