"""Operators without a bound rule: Opaque nodes with bounds (-inf, inf), and the instance still answered.

`verify` stands an Opaque node in for each such operator (here Erf, which onnx2torch converts but
no rule bounds): the attack runs through it, a counterexample is still found and checked, and a
proof is still possible where a later node cuts the unbounded values off.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from verifier import cli
from verifier.bounds.core import Interval
from verifier.bounds.opaque import Opaque
from verifier.graph import build_network
from verifier.load import load_for_verifying
from verifier.prove import prove
from verifier.spec import Spec
from verifier.vnnlib import parse_file


def _model(path, nodes, constants) -> str:
    graph = helper.make_graph(nodes, "opaque", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in constants])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return str(path)


def _property(path, condition: str) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(2)] + [f"(declare-const Y_{j} Real)" for j in range(2)]
    lines += ["(assert (>= X_0 0.0))", "(assert (<= X_0 1.0))", "(assert (>= X_1 0.0))", "(assert (<= X_1 1.0))"]
    path.write_text("\n".join(lines + [f"(assert {condition})"]) + "\n")
    return str(path)


def _erf_model(path) -> str:  # y = erf(W x)
    return _model(path, [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Erf", ["a"], ["y"])],
                  [("w", [[1.0, -1.0], [0.5, 2.0]])])


def _cut_off_model(path) -> str:  # y = where(x > -1, x, erf(x)): the Erf branch is never taken on [0, 1]
    nodes = [helper.make_node("Greater", ["x", "t"], ["c"]), helper.make_node("Erf", ["x"], ["e"]),
             helper.make_node("Where", ["c", "x", "e"], ["y"])]
    return _model(path, nodes, [("t", -1.0)])


def _answer(capsys, model: str, prop: str, *extra: str) -> tuple[str, str]:
    code = cli.main([model, prop, "--timeout", "20", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.strip().splitlines()[-1], err


def test_a_counterexample_through_an_unsupported_operator_is_found_and_checked(capsys, tmp_path):
    model = _erf_model(tmp_path / "erf.onnx")
    prop = _property(tmp_path / "p.vnnlib", "(>= Y_1 0.99)")  # erf(0.5 x0 + 2 x1) reaches 0.995
    results = tmp_path / "out.txt"
    verdict, err = _answer(capsys, model, prop, "--results", str(results))
    assert verdict == "sat" and "unsupported operators: Erf" in err
    assert cli.main(["check", model, prop, str(results)]) == 0


def test_an_unsupported_operator_is_no_proof(capsys, tmp_path):
    model = _erf_model(tmp_path / "erf.onnx")
    prop = _property(tmp_path / "p.vnnlib", "(>= Y_1 1.5)")  # erf < 1: unsat, but nothing bounds Erf
    assert _answer(capsys, model, prop)[0] in ("unknown", "timeout")


def test_values_cut_off_by_a_decided_where_still_give_a_proof(capsys, tmp_path):
    model = _cut_off_model(tmp_path / "where.onnx")
    prop = _property(tmp_path / "p.vnnlib", "(>= Y_0 1.5)")
    assert _answer(capsys, model, prop)[0] == "unsat"


def _bounds_below_samples(tmp_path) -> bool:
    """Whether the IBP and CROWN lower bounds of y_1 - 0.5 lie below every sampled value."""
    model = load_for_verifying(_erf_model(tmp_path / "erf.onnx"))
    network = build_network(model, opaque=True)
    assert network.unbounded.startswith("Erf")
    assert any(isinstance(rule, Opaque) for rule in network.rules)
    prop = parse_file(_property(tmp_path / "p.vnnlib", "(>= Y_1 0.5)"))
    spec = Spec.build(prop, network.input_shape, network.dtype)
    points = torch.rand(200, 1, 2, generator=torch.Generator().manual_seed(0))
    outputs = network(points)
    assert torch.allclose(outputs, torch.erf(points @ torch.tensor([[1.0, -1.0], [0.5, 2.0]])), atol=1e-6)
    least = (outputs[:, 0, 1] - 0.5).min().item()
    return all(bool(np.all(prove(network, spec, method).lower <= least)) for method in ("ibp", "crown"))


def test_the_opaque_bounds_hold_every_sampled_value(tmp_path):
    assert _bounds_below_samples(tmp_path)


def test_the_sampled_check_catches_a_finite_opaque_interval(tmp_path, monkeypatch):
    # as if the node's values were known to be 0.3: bounds above the samples near x = 0
    monkeypatch.setattr(Opaque, "_everything", lambda self, like: Interval(
        torch.full((like.shape[0], *self.out_shape), 0.3, dtype=like.dtype),
        torch.full((like.shape[0], *self.out_shape), 0.3, dtype=like.dtype)))
    assert not _bounds_below_samples(tmp_path)


def test_a_point_where_the_operator_changes_shape_or_fails_gives_nan():
    def narrowing(x):  # a shape set by the value, as a Slice start that is an input would
        return x[: int(x.reshape(-1)[0] > 0.5) + 1]

    rule = Opaque(narrowing, [torch.float32], (1,))
    values = rule(torch.tensor([[0.2, 0.0], [0.9, 0.0]]))
    assert values[0].item() == torch.tensor(0.2).item() and torch.isnan(values[1]).all()
    failing = Opaque(lambda x: x.reshape(7), [torch.float32], (2,))
    assert torch.isnan(failing(torch.zeros(3, 2))).all()
    bounds = rule.ibp(Interval(torch.zeros(3, 2), torch.ones(3, 2)))
    assert bounds.lower.shape == (3, 1) and torch.isneginf(bounds.lower).all() and torch.isposinf(bounds.upper).all()


def test_verify_bounds_lists_the_unsupported_operators(capsys, tmp_path):
    model = _erf_model(tmp_path / "erf.onnx")
    prop = _property(tmp_path / "p.vnnlib", "(>= Y_1 0.5)")
    assert cli.main(["bounds", model, prop, "--method", "crown"]) == 0
    out = capsys.readouterr().out
    assert "unsupported operators, bounded by (-inf, inf): Erf (nodes: Erf_1)" in out
    assert "Y_0: [-inf, inf]" in out
