"""The competition scripts and the time limit, in real processes (each costs seconds of imports)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.conftest import EXAMPLES, REPO, shared_or_skip

MODEL = str(EXAMPLES / "classifier.onnx")
SAFE = str(EXAMPLES / "classifier_radius_0.02.vnnlib")


def script(name: str, *args: str, timeout: float = 120, tmp: str = "/tmp") -> subprocess.CompletedProcess:
    env_path = f"{sys.prefix}/bin"
    return subprocess.run(["bash", str(REPO / name), *args], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": f"{env_path}:/usr/bin:/bin", "TMPDIR": tmp})


def test_prepare_instance_stops_the_stale_run_and_nothing_else(tmp_path):
    sleeper = "import time; time.sleep(60)"
    stale = subprocess.Popen([sys.executable, "-c", sleeper, "verifier.cli stale run"])
    bystander = subprocess.Popen([sys.executable, "-c", sleeper, "verifier.cli suite (a batch run)"])
    try:
        (tmp_path / f"verifier-run-instance-{os.getuid()}.pid").write_text(f"{stale.pid}\n")
        assert script("prepare_instance.sh", "v1", "test", MODEL, SAFE, tmp=str(tmp_path)).returncode == 0
        assert stale.wait(timeout=10) == -9
        assert bystander.poll() is None
    finally:
        stale.kill()
        bystander.kill()


def test_prepare_and_run_instance(tmp_path):
    assert script("prepare_instance.sh", "v1", "test", MODEL, SAFE).returncode == 0
    assert script("prepare_instance.sh", "v1", "test", str(tmp_path / "none.onnx"), SAFE).returncode != 0
    assert script("prepare_instance.sh", "v2", "test", MODEL, SAFE).returncode != 0
    results = tmp_path / "out.txt"
    done = script("run_instance.sh", "v1", "test", MODEL, SAFE, str(results), "60")
    assert done.returncode == 0 and results.read_text() == "unsat\n"


def test_run_instance_exits_0_and_writes_error_on_a_broken_model(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    results = tmp_path / "out.txt"
    done = script("run_instance.sh", "v1", "test", str(broken), SAFE, str(results), "60")
    assert done.returncode == 0 and results.read_text() == "error\n"


def test_sat_through_run_instance_is_confirmed_by_check(tmp_path):
    root = shared_or_skip() / "test"
    results = tmp_path / "out.txt"
    onnx, prop = str(root / "test_sat.onnx"), str(root / "test_prop.vnnlib")
    assert script("run_instance.sh", "v1", "test", onnx, prop, str(results), "60").returncode == 0
    assert results.read_text().startswith("sat\n((X_0 ")
    check = subprocess.run([sys.executable, "-m", "verifier.cli", "check", onnx, prop, str(results)])
    assert check.returncode == 0


def test_the_time_limit_counts_from_process_start_and_is_never_overrun(tmp_path):
    # 0.5 s is less than the imports take: the watchdog ends the run (0.5 s past; 2 s of slack here).
    results = tmp_path / "out.txt"
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "verifier.cli", MODEL, SAFE, "--timeout", "0.5",
                           "--results", str(results)], capture_output=True, text=True, timeout=60)
    elapsed = time.time() - start
    assert elapsed < 0.5 + 2.0, elapsed
    assert done.stdout.strip().splitlines()[-1] in ("timeout", "unsat")
    assert results.read_text().split("\n")[0] in ("timeout", "unsat")
