"""Instance lists and judging against known verdicts."""

from __future__ import annotations

from tests.conftest import shared_or_skip
from verifier.benchmarks.instances import normalize, read_sample, read_suite
from verifier.benchmarks.scoring import Truth, judge, load_truth, points


def test_competition_csv_forms(tmp_path):
    (tmp_path / "s").mkdir()
    csv_path = tmp_path / "s" / "s_instances.csv"
    csv_path.write_bytes(b"./nets/a.onnx,./specs/p.vnnlib,300.0\r\nonnx/b.onnx.gz,q.vnnlib,120\r\n\nc.onnx,r.vnnlib,60")
    instances = read_suite(csv_path)
    assert [(i.onnx, i.vnnlib, i.timeout) for i in instances] == [
        ("./nets/a.onnx", "./specs/p.vnnlib", 300.0), ("onnx/b.onnx.gz", "q.vnnlib", 120.0),
        ("c.onnx", "r.vnnlib", 60.0)]
    assert instances[0].suite == "s"
    assert instances[0].onnx_path == (tmp_path / "s" / "nets" / "a.onnx").resolve()
    assert normalize("./nets/./x.onnx.gz") == "nets/x.onnx"


def test_the_sample_covers_every_suite():
    root = shared_or_skip()
    from verifier.benchmarks.make_sample import SAMPLE

    instances = read_sample(SAMPLE, root)
    suites = {i.suite for i in instances}
    assert suites == {p.name for p in root.iterdir() if p.is_dir()}
    assert all(i.onnx_path.exists() and i.vnnlib_path.exists() for i in instances)


def test_judging_rules():
    unsat, sat = Truth("unsat", None), Truth("sat", None)
    assert judge("unsat", unsat, None) == "correct"
    assert judge("sat", sat, True) == "correct"
    assert judge("sat", sat, False) == "wrong"           # a sat without a confirmed counterexample
    assert judge("unsat", sat, None) == "wrong"
    assert judge("sat", unsat, True) == "finding"        # a checked counterexample outranks 2021 votes
    assert judge("sat", Truth("disputed", "unsat"), True) == "finding"
    assert judge("unsat", Truth("disputed", "unsat"), None) == "correct"
    assert judge("unsat", Truth("disputed", "tie"), None) == "unjudged"
    assert judge("unsat", Truth("unknown", None), None) == "unjudged"
    assert judge("timeout", unsat, None) == "timeout"
    assert judge("unknown", None, None) == "unknown"


def test_four_row_example_scores_minus_80():
    judgements = [judge("unsat", Truth("unsat", None), None), judge("sat", Truth("sat", None), True),
                  judge("sat", Truth("unsat", None), False), judge("unknown", Truth("sat", None), None)]
    assert judgements == ["correct", "correct", "wrong", "unknown"]
    assert points(judgements) == -80
    assert points(judgements, "2023") == -130


def test_ground_truth_files_load():
    root = shared_or_skip().parent.parent / "groundtruth"
    truth = load_truth(root)
    assert truth[("test", "test_sat.onnx", "test_prop.vnnlib")].verdict == "sat"
    assert truth[("test", "test_tiny.onnx", "test_tiny.vnnlib")].majority == "unsat"
