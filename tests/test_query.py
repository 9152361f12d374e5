"""VNN-LIB 2.0 queries: the reader, its one-line errors, and the normal form over (x, z)."""

from __future__ import annotations

import numpy as np
import pytest

from verifier.vnnlib import VnnlibError, parse_text
from verifier.vnnlib.query import Observable, parse_query

HEADER = "(vnnlib-version <2.0>)\n(declare-network N\n  (declare-input X float32 [2, 2])\n" \
         "  (declare-hidden H float32 [3] \"relu_out\")\n  (declare-output Y float32 [2])\n)\n"


def query(body: str, header: str = HEADER):
    return parse_query(header + body, "q.vnnlib")


def test_bounds_become_the_box_and_comparisons_rows_over_observables():
    q = query("(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0)))\n(assert (>= X[0,1] -1.0))\n(assert (<= X[0,1] 2))\n"
              "(assert (<= X[1,0] 0.5)) (assert (>= X[1,0] 0.5))\n(assert (>= X[1,1] 3.0)) (assert (<= X[1,1] 4.0))\n"
              "(assert (>= (+ Y[0] (* 2.0 H[1])) (- Y[1] 1.5)))")
    prop, observables = q.compile()
    assert observables == [Observable((("Y", 0),)), Observable((("H", 1),)), Observable((("Y", 1),))]
    (case,) = prop.cases
    assert case.lower.tolist() == [0.0, -1.0, 0.5, 3.0] and case.upper.tolist() == [1.0, 2.0, 0.5, 4.0]
    (disjunct,) = case.disjuncts
    # Y0 + 2 H1 >= Y1 - 1.5  <=>  -Y0 - 2 H1 + Y1 <= 1.5
    assert disjunct.matrix.tolist() == [[-1.0, -2.0, 1.0]] and disjunct.offset.tolist() == [1.5]


def test_products_inputs_in_relations_and_disjunctions():
    q = query("(assert (and (>= X[0,0] 0.0) (<= X[0,0] 2.0) (>= X[0,1] 0.0) (<= X[0,1] 2.0)))\n"
              "(assert (and (>= X[1,0] 0.0) (<= X[1,0] 1.0) (>= X[1,1] 0.0) (<= X[1,1] 1.0)))\n"
              "(assert (>= (* X[0,0] X[0,1]) 4.0))\n(assert (or (<= Y[0] 0.0) (!= Y[1] X[1,1])))")
    prop, observables = q.compile()
    assert Observable((("X", 0), ("X", 1))) in observables and Observable((("X", 3),)) in observables
    (case,) = prop.cases
    assert len(case.disjuncts) == 3  # Y0 <= 0, Y1 < X11, Y1 > X11


def test_unbounded_inputs_range_over_their_type():
    prop, _ = query("(assert (>= X[0,0] 0.0))\n(assert (<= Y[0] 1.0))").compile()
    largest = float(np.finfo(np.float32).max)
    assert prop.cases[0].lower.tolist() == [0.0, -largest, -largest, -largest]
    assert prop.cases[0].upper.tolist() == [largest] * 4


def test_equal_and_isomorphic_networks():
    text = ("(vnnlib-version <2.0>)\n(declare-network A (declare-input X float32 [1]) (declare-output Y float32 [1]))\n"
            "(declare-network B (equal-to A) (declare-input X2 float32 [1]) (declare-output Y2 float32 [1]))\n"
            "(declare-network C (isomorphic-to A) (declare-input X3 float16 [1]) (declare-output Y3 float16 [1]))\n"
            "(assert (<= Y2 Y))")
    with pytest.raises(VnnlibError, match="X3 has shape"):  # a [1] tensor is indexed, not used bare
        parse_query(text.replace("(<= Y2 Y)", "(<= X3 0.0)"), "q")
    q = parse_query(text.replace("(<= Y2 Y)", "(<= Y2[0] Y[0])"), "q")
    assert [n.relation for n in q.networks] == [None, ("equal-to", "A"), ("isomorphic-to", "A")]
    assert [t.name for t in q.inputs] == ["X", "X2", "X3"]


def test_strict_comparisons_are_checked_strictly():
    q = query("(assert (< Y[0] 1.0))\n(assert (> H[2] 0.0))\n(assert (== Y[1] 2.0))")
    values = {"Y": np.array([0.5, 2.0]), "H": np.array([0.0, 0.0, 0.1]), "X": np.zeros(4)}
    assert q.holds(values)
    assert not q.holds({**values, "Y": np.array([1.0, 2.0])})
    assert not q.holds({**values, "Y": np.array([0.5, 2.0000001])})


# (query text, the problem its one-line error names)
BAD = [
    ("(assert (>= X[0] 0.0))", "X[0] has 1 indices but X has 2 dimensions"),
    ("(assert (>= X[2,0] 0.0))", "X[2,0] is outside X's shape [2,2]"),
    ("(assert (>= X 0.0))", "X has shape [2,2]: index it"),
    ("(assert (>= Z[0] 0.0))", "Z is used but never declared"),
    ("(assert (>= X[0,0]))", "'>=' compares exactly two terms"),
    ("(assert (=> X[0,0] 1.0))", "unknown operator '=>'"),
    ("(assert (>= (exp X[0,0]) 1.0))", "unknown operator 'exp' in a term"),
    ("(assert (>= X[a,0] 0.0))", "is not a list of whole numbers"),
    ("(assert (>= X[0,0] 0.0)", "unclosed '('"),
    ("(assert (>= X[0,0] 1e999))", "overflows float64"),
    ("(declare-network M (declare-input X float32 [1]) (declare-output O float32 [1]))", "declared twice"),
    ("(check-sat)", "unknown command 'check-sat'"),
    ("(assert (and))", "'and' needs at least one argument"),
    ("(assert (<= X[0,0] 1.0)) (declare-network M (declare-input A float32 [1]) (declare-output B float32 [1]))",
     "networks must be declared before the assertions"),
]


@pytest.mark.parametrize("body,problem", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_queries_give_one_line_naming_the_line(body, problem):
    with pytest.raises(VnnlibError) as caught:
        query(body)
    message = str(caught.value)
    assert problem in message and "\n" not in message and message.startswith("q.vnnlib:")


BAD_HEADERS = [
    ("(declare-network N (declare-input X float32 [1]) (declare-output Y float32 [1]))", "starts with (vnnlib-version"),
    ("(vnnlib-version <3.0>)\n(declare-network N (declare-input X float32 [1]) (declare-output Y float32 [1]))",
     "is not 2.x"),
    ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float33 [1]) (declare-output Y float32 [1]))",
     "unknown element type 'float33'"),
    ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1 2]) (declare-output Y float32 [1]))",
     "is written [d1,d2,...]"),
    ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [0]) (declare-output Y float32 [1]))",
     "a dimension below 1"),
    ("(vnnlib-version <2.0>)\n(declare-network N (declare-output Y float32 [1]) (declare-input X float32 [1]))",
     "declare-input after the outputs"),
    ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1]))", "at least one declare-input"),
    ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1]) (declare-output Y float32 [1]))\n"
     "(declare-network M (equal-to K) (declare-input A float32 [1]) (declare-output B float32 [1]))",
     "no network K is declared before it"),
    ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1]) (declare-output Y float32 [1]))\n"
     "(declare-network M (equal-to N) (declare-input A float32 [2]) (declare-output B float32 [1]))",
     "but its inputs differ"),
    ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1]) (declare-hidden H float32 [1] h) "
     "(declare-output Y float32 [1]))", "is a quoted string"),
]


@pytest.mark.parametrize("text,problem", BAD_HEADERS, ids=[b[1][:30] for b in BAD_HEADERS])
def test_bad_declarations_give_one_line(text, problem):
    with pytest.raises(VnnlibError) as caught:
        parse_query(text + "\n(assert (<= X[0] 1.0))", "q.vnnlib")
    assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_a_2_0_file_given_to_the_1_0_parser_says_how_to_decide_it():
    with pytest.raises(VnnlibError, match="verify verify QUERY --network"):
        parse_text(HEADER + "(assert (<= X[0,0] 1.0))", "q.vnnlib")


def test_mutated_queries_parse_or_fail_in_one_line():
    """Random deletions, duplications and swaps of tokens of a valid query: each either parses
    and compiles, or fails with one VnnlibError line (never another exception)."""
    text = HEADER + ("(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))\n"
                     "(assert (and (>= X[1,0] 0.0) (<= X[1,0] 1.0) (>= X[1,1] 0.0) (<= X[1,1] 1.0)))\n"
                     "(assert (or (>= (* 2.0 Y[0]) H[1]) (< (- Y[1] X[0,0]) -0.5)))")
    tokens = text.replace("(", " ( ").replace(")", " ) ").split()
    rng = np.random.default_rng(0)
    parsed = failed = 0
    for _ in range(300):
        mutant = list(tokens)
        i, j = rng.integers(len(mutant), size=2)
        kind = rng.integers(3)
        if kind == 0:
            del mutant[i]
        elif kind == 1:
            mutant.insert(i, mutant[j])
        else:
            mutant[i], mutant[j] = mutant[j], mutant[i]
        try:
            parse_query(" ".join(mutant), "m.vnnlib").compile()
            parsed += 1
        except VnnlibError as error:
            assert "\n" not in str(error)
            failed += 1
    assert parsed > 10 and failed > 100
