"""`verify suite --cluster`: a local Ray cluster of two nodes (127.0.0.1), actors killed mid-run.

Skipped where Ray is not installed (`pip install -e ".[cluster]"`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import EXAMPLES
from tests.fake_verifier import hooks
from tests.test_suite import fake_suite, result_rows, run_fake, run_to_end, suite_run
from verifier.benchmarks.results import RESULTS_CSV, read_rows
from verifier.benchmarks.runner import Hooks, RunOptions

# every node of the test cluster on 127.0.0.1: Ray's switch for clusters on one machine makes it
# take the loopback address as the node's (on Linux it takes the outward one otherwise)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e \".[cluster]\")")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    local.add_node(num_cpus=1)
    yield local
    ray.shutdown()
    local.shutdown()


def test_actors_killed_mid_run_lose_and_repeat_nothing(tmp_path, cluster):
    suite = fake_suite(tmp_path / "suite", [""] * 30)
    assert run_fake(str(suite), "--out", str(tmp_path / "local"), "--jobs", "2", "--truth", "none") in (0, 1)
    run = suite_run([suite], tmp_path / "cluster", RunOptions(jobs=2, cluster=cluster.address), hooks())
    killed: list[str] = []
    chooser = random.Random(7)

    def killer() -> None:
        """SIGKILL the actor of a running instance at a few random moments, never one that an
        earlier kill already hit (that one is allowed to fail only once)."""
        while len(killed) < 3 and run.state.done < run.state.total:
            time.sleep(chooser.uniform(0.05, 0.4))
            candidates = [(slot, label) for slot, label in list(run.state.running.items())
                          if label not in killed and slot in run.workers]
            if candidates:
                slot, label = chooser.choice(candidates)
                killed.append(label)
                os.kill(run.workers[slot].pid, signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run_to_end(run)
    thread.join()
    assert killed and run.requeued, "no actor was killed under an instance: the test did not test anything"
    rows = read_rows(tmp_path / "cluster" / RESULTS_CSV)
    assert len({(r["onnx"], r["vnnlib"]) for r in rows}) == len(rows) == 30  # nothing lost or twice
    assert result_rows(tmp_path / "cluster") == result_rows(tmp_path / "local")


def test_the_real_verifier_on_the_examples_gives_the_local_verdicts(tmp_path, cluster):
    """With one actor killed while the first instance runs (the real verifier takes seconds)."""
    local = suite_run([EXAMPLES], tmp_path / "local", RunOptions(jobs=2), Hooks())
    remote = suite_run([EXAMPLES], tmp_path / "cluster", RunOptions(jobs=2, cluster=cluster.address), Hooks())

    def kill_once() -> None:
        deadline = time.monotonic() + 60
        while not (remote.state.running and remote.workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.Random(3).uniform(0.2, 1.0))
        slot = next(iter(remote.state.running), None)
        if slot is not None and slot in remote.workers:
            os.kill(remote.workers[slot].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_once, daemon=True)
    run_to_end(local)
    killer.start()
    run_to_end(remote)
    killer.join()
    assert remote.requeued, "the kill did not land on an instance"
    verdicts = [sorted((r["vnnlib"], r["verdict"], r["check"]) for r in read_rows(folder / RESULTS_CSV))
                for folder in (tmp_path / "local", tmp_path / "cluster")]
    assert verdicts[0] == verdicts[1]
    assert [verdict for _, verdict, _ in verdicts[1]] == ["unsat", "sat"]
    assert remote.state.cluster.startswith("2 nodes")


def test_without_ray_the_cluster_option_is_one_user_error(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    suite = fake_suite(tmp_path / "suite", [""])
    assert run_fake(str(suite), "--out", str(tmp_path / "out"), "--cluster", "auto") == 2
    assert "Ray is not installed" in capsys.readouterr().err


def test_limits_are_enforced_on_the_node_as_locally(tmp_path, cluster):
    """Overruns, crashes and memory hogs inside actors: the local rules, and the run goes on."""
    suite = fake_suite(tmp_path / "toy", ["hang", "answer unsat", "crash", "answer sat", "hog 400", "answer unsat"])
    assert run_fake(str(suite), "--out", str(tmp_path / "out"), "--truth", "none", "--cap", "0.5", "--grace", "0.5",
                    "--memory-cap", "200", "--jobs", "2", "--cluster", cluster.address) == 0
    rows = {row["onnx"]: row for row in read_rows(tmp_path / "out" / RESULTS_CSV)}
    assert [rows[f"m{k}.onnx"]["verdict"] for k in range(6)] == ["timeout", "unsat", "error", "sat", "error", "unsat"]
    assert "exit code 3" in rows["m2.onnx"]["note"] and "memory cap" in rows["m4.onnx"]["note"]
    assert rows["m3.onnx"]["check"] == "valid"


def test_a_killed_driver_resumes_on_the_cluster(tmp_path, cluster):
    from tests.conftest import REPO

    suite = fake_suite(tmp_path / "fake", [""] * 20)
    assert run_fake(str(suite), "--out", str(tmp_path / "local"), "--jobs", "2", "--truth", "none") in (0, 1)
    command = [sys.executable, "-m", "tests.fake_verifier", "suite", str(suite), "--out", str(tmp_path / "cluster"),
               "--jobs", "2", "--truth", "none", "--resume", "--cluster", cluster.address]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    for _ in range(1 + 6):  # its start line, then six recorded rows
        driver.stdout.readline()
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    driver.stdout.close()
    kept = len(read_rows(tmp_path / "cluster" / RESULTS_CSV))
    assert 0 < kept < 20
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode in (0, 1), resumed.stderr[-2000:]
    assert result_rows(tmp_path / "cluster") == result_rows(tmp_path / "local")
