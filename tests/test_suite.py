"""`verify suite` and `verify suite-report`: crash-safe results, limits, scoring, display, plots.

Most tests run the batch machinery with the fake verifier of tests/fake_verifier.py (workers
without torch); one runs the real verifier on the examples end to end.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import EXAMPLES, REPO
from tests.fake_verifier import hooks
from verifier.benchmarks.progress import PlainDisplay, ProgressState, render
from verifier.benchmarks.results import FIELDS, RESULTS_CSV, ResultsStore, counterexample_name, format_row, read_rows
from verifier.benchmarks.suite import main as suite_main
from verifier.benchmarks.suite_report import score_folder

SETTINGS = '{"bound_method":"crown"}'


def fake_suite(folder: Path, models: list[str]) -> Path:
    """A suite folder whose k-th row runs fake model k (its text tells the fake what to do)."""
    folder.mkdir(parents=True)
    lines = []
    for k, text in enumerate(models):
        (folder / f"m{k}.onnx").write_text(text)
        (folder / f"p{k}.vnnlib").write_text("")
        lines.append(f"m{k}.onnx,p{k}.vnnlib,30")
    (folder / "instances.csv").write_text("\n".join(lines) + "\n")
    return folder


def run_fake(*args: str) -> int:
    return suite_main(["suite", *args], hooks())


def suite_run(sources: list[Path], out: Path, options, run_hooks):
    """A SuiteRun over the suites `sources`, writing to `out` (no truth), as `verify suite` makes it."""
    from verifier.benchmarks.instances import collect
    from verifier.benchmarks.runner import SuiteRun, family_settings

    instances = collect(sources, None, sources[0])
    store = ResultsStore(out, False, run_hooks.write)
    return SuiteRun(instances, store, options, family_settings(instances, options), {}, run_hooks)


def run_to_end(run) -> None:
    """Run everything pending with plain progress lines kept out of the test's output."""
    try:
        run.run(PlainDisplay(run.state, io.StringIO()))
    finally:
        run.store.close()


def result_rows(folder: Path) -> list[tuple[str, ...]]:
    """Rows of a results folder without the wall time, which differs between runs."""
    return sorted(tuple(v for k, v in row.items() if k != "seconds") for row in read_rows(folder / RESULTS_CSV))


def test_a_partial_last_row_is_cut_away_on_resume(tmp_path):
    store = ResultsStore(tmp_path, resume=False)
    row = dict.fromkeys(FIELDS, "x") | {"suite": "s", "onnx": "a.onnx", "vnnlib": "p.vnnlib", "verdict": "unsat"}
    store.append(row)
    store.close()
    whole = (tmp_path / RESULTS_CSV).read_bytes()
    torn = format_row(row | {"vnnlib": "q.vnnlib"})
    (tmp_path / RESULTS_CSV).write_bytes(whole + torn[:-7])
    with pytest.raises(Exception, match="--resume"):
        ResultsStore(tmp_path, resume=False)
    store = ResultsStore(tmp_path, resume=True)
    assert (tmp_path / RESULTS_CSV).read_bytes() == whole
    assert store.done == {("s", "a.onnx", "p.vnnlib")} and len(store.rows) == 1
    store.close()


def test_counterexample_names_stay_short():
    from verifier.benchmarks.instances import Instance

    long_name = "prop_" + "x" * 216 + ".vnnlib"
    name = counterexample_name(Instance("marabou-cifar10", Path("."), "net.onnx", long_name, 300.0, "", 17))
    assert len(name) < 64 and name.startswith("marabou-cifar10-0017-") and name.endswith(".txt")
    assert name != counterexample_name(Instance("marabou-cifar10", Path("."), "net.onnx", "other", 300.0, "", 17))


def start_fake_run(suite: Path, out: Path, pause: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.fake_verifier", "--split-writes", str(pause), "suite", str(suite),
               "--out", str(out), "--jobs", "2", "--truth", "none", "--resume"]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def wait_for_lines(process: subprocess.Popen, count: int) -> None:
    """Read `count` lines of the run's plain output: its start line, then one per recorded row."""
    for _ in range(count):
        if not process.stdout.readline():
            return


def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_results(tmp_path):
    suite = fake_suite(tmp_path / "fake", [""] * 40)
    reference = tmp_path / "reference"
    assert start_fake_run(suite, reference, 0.0).wait(timeout=120) in (0, 1)  # 1: invalid counterexamples
    rng = random.Random(5)
    out = tmp_path / "killed"
    kills = torn = 0
    while kills < 20:
        process = start_fake_run(suite, out, 0.05)
        if rng.random() < 0.8:  # most kills while instances run, after 0 to 2 more rows; the others at start-up
            wait_for_lines(process, 1 + rng.randrange(3))
        time.sleep(rng.uniform(0.0, 0.15))
        assert process.poll() is None, f"the run ended after {kills} kills: too few"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
        kills += 1
        data = (out / RESULTS_CSV).read_bytes() if (out / RESULTS_CSV).exists() else b""
        torn += bool(data) and not data.endswith(b"\n")
    kept = len(read_rows(out / RESULTS_CSV))
    print(f"{kills} kills, {torn} inside a row, {kept} of 40 rows recorded before the last resume")
    assert 0 < kept < 40
    assert start_fake_run(suite, out, 0.05).wait(timeout=120) in (0, 1)
    assert torn >= 1, "no kill landed inside a row"
    rows = result_rows(out)
    assert rows == result_rows(reference) and len(rows) == 40 and len(set(rows)) == 40
    for name in os.listdir(reference / "counterexamples"):
        assert (out / "counterexamples" / name).read_text() == (reference / "counterexamples" / name).read_text()


def test_a_wrong_answer_is_shown_loudly_and_fails_the_command(tmp_path, capsys):
    suite = fake_suite(tmp_path / "toy", ["answer unsat", "answer sat", "answer unsat"])
    truth = tmp_path / "toy.csv"
    truth.write_text("onnx,vnnlib,timeout,verdict\nm0.onnx,p0.vnnlib,30,sat\nm1.onnx,p1.vnnlib,30,sat\n"
                     "./m2.onnx,p2.vnnlib,30,unsat\n")
    assert run_fake(str(suite), "--out", str(tmp_path / "out"), "--truth", str(truth)) == 1
    out, err = capsys.readouterr()
    assert "WRONG out: toy m0.onnx p0.vnnlib: answered unsat, known sat" in err
    assert "1 WRONG ANSWER" in err
    assert "m0.onnx p0.vnnlib: unsat" in out and "WRONG" in out
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| **total** | **3** | **1** | **2** | **1** | **1** | **1** |" in summary
    # With the first row known unsat, the same results pass.
    truth.write_text("onnx,vnnlib,timeout,verdict\nm0.onnx,p0.vnnlib,30,unsat\n")
    assert suite_main(["suite-report", str(tmp_path / "out"), "--truth", str(truth)]) == 0


def write_results(folder: Path, rows: list[dict[str, str]]) -> None:
    folder.mkdir()
    with open(folder / RESULTS_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(dict.fromkeys(FIELDS, "") | {"suite": "toy", "timeout": "30", "settings": SETTINGS,
                                                          "version": "0"} | row)


def test_four_hand_made_rows_score_minus_80_and_minus_130_under_2023_rules(tmp_path, capsys):
    write_results(tmp_path / "four", [
        {"onnx": "a.onnx", "vnnlib": "p.vnnlib", "verdict": "unsat", "seconds": "1.5"},
        {"onnx": "b.onnx", "vnnlib": "p.vnnlib", "verdict": "sat", "seconds": "2", "check": "valid",
         "counterexample": "b.txt"},
        {"onnx": "c.onnx", "vnnlib": "p.vnnlib", "verdict": "sat", "seconds": "3", "check": "invalid"},
        {"onnx": "d.onnx", "vnnlib": "p.vnnlib", "verdict": "unknown", "seconds": "30"}])
    truth = tmp_path / "toy.csv"
    truth.write_text("onnx,vnnlib,verdict\na.onnx,p.vnnlib,unsat\nb.onnx,p.vnnlib,sat\nc.onnx,p.vnnlib,unsat\n"
                     "d.onnx,p.vnnlib,sat\n")
    from verifier.benchmarks.scoring import load_truth

    for rules, points in (("2021", -80), ("2023", -130)):
        total = score_folder(tmp_path / "four", load_truth(truth), rules).tallies["total"]
        assert total.points == points
        assert [total.counts[c] for c in ("correct sat", "correct unsat", "wrong", "unknown")] == [1, 1, 1, 1]
    markdown = tmp_path / "four.md"
    assert suite_main(["suite-report", str(tmp_path / "four"), "--truth", str(truth), "--rules", "2023",
                       "--markdown", str(markdown)]) == 1
    err = capsys.readouterr().err
    assert "WRONG four: toy c.onnx p.vnnlib: answered sat, counterexample invalid, known unsat" in err
    assert "| **-130** |" in markdown.read_text()


def test_the_progress_panel_shows_counts_times_and_the_running_instance():
    state = ProgressState(total=10, started=1000.0)
    for slot, verdict in enumerate(["sat", "unsat", "unsat", "timeout"]):
        state.start(slot, f"suite m{slot}.onnx p{slot}.vnnlib")
        state.finish(slot, verdict, "wrong" if slot == 0 else "correct")
    state.start(1, "acasxu ACASXU_run2a_1_1_batch_2000.onnx prop_1.vnnlib")
    console = Console(record=True, force_terminal=True, width=120)
    console.print(render(state, now=1040.0))
    text = console.export_text(clear=False)
    print(text)
    assert "4/10 done" in text
    assert "running: acasxu ACASXU_run2a_1_1_batch_2000.onnx prop_1.vnnlib" in text
    assert "sat 1  unsat 2  unknown 0  timeout 1  error 0  wrong 1" in text
    assert "elapsed 0:00:40" in text and "left ~0:01:00" in text
    assert "\x1b[" in console.export_text(styles=True)  # drawn for a terminal


def test_without_a_terminal_the_output_is_plain_lines(tmp_path):
    stream = io.StringIO()
    state = ProgressState(total=2, started=time.time() - 3)
    row = {"suite": "s", "onnx": "a.onnx", "vnnlib": "p.vnnlib", "verdict": "unsat", "seconds": "1.25"}
    with PlainDisplay(state, stream) as display:
        state.finish(0, "unsat", "correct")
        display.finished(row, "correct")
    assert stream.getvalue().splitlines()[1].startswith("[1/2] s a.onnx p.vnnlib: unsat in 1.25 s | sat 0  unsat 1")
    # A whole run through a pipe, as CI sees it.
    suite = fake_suite(tmp_path / "toy", ["answer unsat", "answer unknown"])
    done = subprocess.run([sys.executable, "-m", "tests.fake_verifier", "suite", str(suite), "--out",
                           str(tmp_path / "out"), "--truth", "none"], cwd=REPO, capture_output=True, text=True)
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2 instances, 0 recorded already"
    assert lines[1].startswith("[1/2] toy m0.onnx p0.vnnlib: unsat in ") and "elapsed 0:00:0" in lines[1]
    assert lines[2].startswith("[2/2] toy m1.onnx p1.vnnlib: unknown in ") and "left ~0:00:00" in lines[2]
    assert "\x1b[" not in done.stdout


def test_overruns_crashes_and_memory_hogs_are_killed_and_the_run_goes_on(tmp_path, capsys):
    suite = fake_suite(tmp_path / "toy", ["hang", "answer unsat", "crash", "answer sat", "hog 400", "answer unsat"])
    start = time.time()
    assert run_fake(str(suite), "--out", str(tmp_path / "out"), "--truth", "none", "--cap", "0.5", "--grace",
                    "0.5", "--memory-cap", "200") == 0
    assert time.time() - start < 30
    rows = {row["onnx"]: row for row in read_rows(tmp_path / "out" / RESULTS_CSV)}
    assert [rows[f"m{k}.onnx"]["verdict"] for k in range(6)] == ["timeout", "unsat", "error", "sat", "error", "unsat"]
    assert 1.0 <= float(rows["m0.onnx"]["seconds"]) < 5 and rows["m0.onnx"]["timeout"] == "0.5"
    assert "exit code 3" in rows["m2.onnx"]["note"] and "memory cap" in rows["m4.onnx"]["note"]
    assert rows["m3.onnx"]["check"] == "valid"


def test_a_worker_that_cannot_start_stops_the_run_with_a_message(tmp_path, capsys):
    from verifier.benchmarks.runner import Hooks

    suite = fake_suite(tmp_path / "toy", ["answer unsat"])
    broken = Hooks("tests.fake_verifier:no_such_factory", hooks().check)
    assert suite_main(["suite", str(suite), "--out", str(tmp_path / "out"), "--truth", "none"], broken) == 1
    assert "error: a worker did not start (exit code 1): see workers.log" in capsys.readouterr().err
    assert "AttributeError" in (tmp_path / "out" / "workers.log").read_text()
    assert read_rows(tmp_path / "out" / RESULTS_CSV) == []


def test_user_errors_give_one_line_and_exit_2(tmp_path, capsys):
    suite = fake_suite(tmp_path / "toy", [""])
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad_instances.csv").write_text("a.onnx,p.vnnlib,300\r\nb.onnx,q.vnnlib,soon")
    (bad / "a.onnx").write_text("")
    (bad / "p.vnnlib").write_text("")
    cases = [([str(tmp_path / "none")], "none: no such folder"),
             ([str(tmp_path / "empty")], "empty: no *instances.csv in this folder"),
             ([str(bad)], "bad_instances.csv: row 2: the timeout 'soon' is not a positive number"),
             ([str(suite), "--set", "nonsense=1"], "--set nonsense=1: unknown setting 'nonsense'"),
             ([str(suite), "--set", "branch.batch=0"], "--set branch.batch=0: branch.batch must be an integer >= 1"),
             ([str(suite), "--settings", str(tmp_path / "none.yaml")], "argument --settings: "),
             ([str(suite), "--jobs", "0"], "argument --jobs: must be a whole number >= 1, got '0'"),
             ([str(suite), "--cap", "nan"], "argument --cap: must be a positive number, got 'nan'"),
             ([str(suite), "--grace", "-1"], "argument --grace: must be a number >= 0"),
             ([str(suite), "--truth", str(tmp_path / "missing.csv")], "missing.csv: no such ground-truth file")]
    for args, message in cases:
        assert run_fake(*args, "--out", str(tmp_path / "out")) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    (bad / "bad_instances.csv").write_text("a.onnx,p.vnnlib,300\nb.onnx,q.vnnlib,60\n")
    assert run_fake(str(bad), "--out", str(tmp_path / "out")) == 2
    assert "bad_instances.csv: row 2: " in capsys.readouterr().err


def test_a_sample_file_names_rows_of_several_suites(tmp_path):
    fake_suite(tmp_path / "suites" / "one", ["answer unsat", "answer sat"])
    fake_suite(tmp_path / "suites" / "two", ["answer unknown"])
    sample = tmp_path / "sample.csv"
    sample.write_text("one,m1.onnx,p1.vnnlib,60\ntwo,./m0.onnx,p0.vnnlib,60")
    assert run_fake("--sample", str(sample), "--suites-root", str(tmp_path / "suites"), "--out",
                    str(tmp_path / "out"), "--truth", "none", "--scale", "0.5", "--set", "attack.rounds=2") == 0
    rows = read_rows(tmp_path / "out" / RESULTS_CSV)
    assert sorted((r["suite"], r["verdict"], r["timeout"]) for r in rows) == [("one", "sat", "30"),
                                                                             ("two", "unknown", "30")]
    assert all(json.loads(r["settings"])["attack"]["rounds"] == 2 for r in rows)


def test_the_real_verifier_on_the_examples_in_the_competition_layout(tmp_path, capsys):
    from verifier.cli import main

    suite = tmp_path / "demo"
    (suite / "nets").mkdir(parents=True)
    shutil.copy(EXAMPLES / "classifier.onnx", suite / "nets" / "classifier.onnx")
    (suite / "nets" / "classifier.onnx.gz").write_bytes(gzip.compress((EXAMPLES / "classifier.onnx").read_bytes()))
    for radius in ("0.02", "0.5"):
        shutil.copy(EXAMPLES / f"classifier_radius_{radius}.vnnlib", suite / f"radius_{radius}.vnnlib")
    (suite / "demo_instances.csv").write_bytes(b"./nets/classifier.onnx,./radius_0.02.vnnlib,60\r\n"
                                               b"nets/classifier.onnx.gz,radius_0.5.vnnlib,60.0")
    truth = tmp_path / "demo.csv"
    truth.write_text("onnx,vnnlib,verdict\nnets/classifier.onnx,radius_0.02.vnnlib,unsat\n"
                     "nets/classifier.onnx,radius_0.5.vnnlib,sat\n")
    out = tmp_path / "run"
    assert main(["suite", str(suite), "--out", str(out), "--jobs", "2", "--truth", str(truth)]) == 0
    rows = {row["vnnlib"]: row for row in read_rows(out / RESULTS_CSV)}
    assert rows["./radius_0.02.vnnlib"]["verdict"] == "unsat"
    sat = rows["radius_0.5.vnnlib"]
    assert sat["verdict"] == "sat" and sat["check"] == "valid"
    assert (out / "counterexamples" / sat["counterexample"]).read_text().startswith("sat\n((X_0 ")
    assert (out / "cactus.png").stat().st_size > 0
    assert "| **total** | **2** | **1** | **1** | **1** | **1** | **0** |" in (out / "summary.md").read_text()
    capsys.readouterr()


def test_the_cactus_plot_draws_one_line_per_results_folder(tmp_path):
    from verifier.benchmarks.suite_report import plot_runs

    folders = []
    for name, times in (("fast", ["0.5", "1", "2"]), ("slow", ["3", "30"]), ("none", [])):
        folders.append(tmp_path / name)
        write_results(folders[-1], [{"onnx": f"m{k}.onnx", "vnnlib": "p.vnnlib", "verdict": "unsat", "seconds": t}
                                    for k, t in enumerate(times)])
    scored = [score_folder(folder, {}, "2021") for folder in folders]
    from verifier.benchmarks.plot import cactus_plot, solved_times

    figure = cactus_plot({one.name: solved_times(one.rows, one.judgements) for one in scored}, tmp_path / "c.png")
    axes = figure.axes[0]
    assert [line.get_label() for line in axes.get_lines()] == ["fast (3 solved)", "slow (2 solved)", "none (0 solved)"]
    assert list(axes.get_lines()[1].get_ydata()) == [3.0, 30.0] and axes.get_yscale() == "log"
    plot_runs(scored, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert suite_main(["suite-report", *map(str, folders), "--plot", str(tmp_path / "r.png"), "--truth", "none"]) == 0
    assert (tmp_path / "r.png").exists()


def test_an_instance_lost_twice_is_an_error_and_one_lost_once_runs_again(tmp_path, monkeypatch):
    """The re-queue rule of --cluster, with workers that die under chosen instances (no Ray)."""
    from verifier.benchmarks.runner import RunOptions, SuiteRun
    from verifier.benchmarks.workers import Reply, WorkerLost

    suite = fake_suite(tmp_path / "toy", ["answer unsat", "answer sat", "answer unsat"])
    losses = {"m0.onnx": 1, "m2.onnx": 2}  # times each instance's worker dies under it

    class Dying:
        alive = True

        def run(self, task, limit, memory_cap_mb, stop):
            name = Path(task["onnx"]).name
            if losses.get(name, 0) > 0:
                losses[name] -= 1
                self.alive = False
                raise WorkerLost("the actor died")
            return Reply(Path(task["onnx"]).read_text().split()[1])

        def close(self):
            self.alive = False

    monkeypatch.setattr(SuiteRun, "_new_worker", lambda self: Dying())
    run_to_end(suite_run([suite], tmp_path / "out", RunOptions(), hooks()))
    rows = {row["onnx"]: row for row in read_rows(tmp_path / "out" / RESULTS_CSV)}
    assert [rows[f"m{k}.onnx"]["verdict"] for k in range(3)] == ["unsat", "sat", "error"]
    assert rows["m2.onnx"]["note"] == "lost twice: the actor died" and len(rows) == 3
