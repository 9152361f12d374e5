"""The VNN-LIB parser: every form of the shared files, adversarial structure, and user errors."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from tests.conftest import opcoverage_or_skip, shared_or_skip
from verifier.vnnlib import VnnlibError, parse_file, parse_text


def decls(n_in: int, n_out: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))


def box(n: int, low: float = -1, high: float = 1) -> str:
    return "".join(f"(assert (>= X_{i} {low}))\n(assert (<= X_{i} {high}))\n" for i in range(n))


def test_top_level_bounds_and_single_output_row():
    prop = parse_text(decls(2, 2) + box(2) + "(assert (<= Y_0 3.5))")
    (case,) = prop.cases
    np.testing.assert_array_equal(case.lower, [-1, -1])
    np.testing.assert_array_equal(case.upper, [1, 1])
    (disjunct,) = case.disjuncts
    np.testing.assert_array_equal(disjunct.matrix, [[1, 0]])
    np.testing.assert_array_equal(disjunct.offset, [3.5])


def test_output_comparisons_become_rows_of_c_y_le_d():
    prop = parse_text(decls(1, 3) + box(1) + "(assert (>= Y_0 Y_2))\n(assert (<= Y_1 Y_2))\n(assert (>= Y_1 -2))")
    (disjunct,) = prop.cases[0].disjuncts
    np.testing.assert_array_equal(disjunct.matrix, [[-1, 0, 1], [0, 1, -1], [0, -1, 0]])
    np.testing.assert_array_equal(disjunct.offset, [0, 0, 2])


def test_constant_on_the_left_and_strict_and_equal():
    prop = parse_text(decls(1, 1) + box(1) + "(assert (< 2 Y_0))")
    np.testing.assert_array_equal(prop.cases[0].disjuncts[0].matrix, [[-1]])
    np.testing.assert_array_equal(prop.cases[0].disjuncts[0].offset, [-2])
    prop = parse_text(decls(1, 1) + box(1) + "(assert (= Y_0 4))")
    np.testing.assert_array_equal(prop.cases[0].disjuncts[0].matrix, [[1], [-1]])


def test_or_followed_by_another_assert_is_a_conjunction():
    # A known source of wrong answers: the assert after the `or` must apply to every disjunct.
    text = decls(1, 3) + box(1) + "(assert (or (and (>= Y_1 Y_0)) (and (>= Y_2 Y_0))))\n(assert (<= Y_0 5))"
    (case,) = parse_text(text).cases
    assert len(case.disjuncts) == 2
    for disjunct, own_row in zip(case.disjuncts, ([1, -1, 0], [1, 0, -1])):
        assert sorted(disjunct.matrix.tolist()) == sorted([[1, 0, 0], own_row])


def test_input_disjunction_with_several_clauses_gives_several_boxes():
    text = decls(2, 2) + """
(assert (or
    (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))
    (and (>= X_0 2) (<= X_0 3) (>= X_1 -1) (<= X_1 0))
))
(assert (or (and (<= Y_0 Y_1)) (and (<= Y_1 0))))
"""
    prop = parse_text(text)
    assert len(prop.cases) == 2
    assert [len(c.disjuncts) for c in prop.cases] == [2, 2]
    np.testing.assert_array_equal(prop.cases[1].lower, [2, -1])


def test_nn4sys_style_disjuncts_with_their_own_box_and_row():
    text = decls(1, 1) + """(assert (or
    (and (>= X_0 135845) (<= X_0 216892) (<= Y_0 102))
    (and (>= X_0 135845) (<= X_0 216892) (>= Y_0 1.4e3))
    (and (>= X_0 1.19362e6) (<= X_0 1.2e6) (<= Y_0 5))
))"""
    prop = parse_text(text)
    assert len(prop.cases) == 2
    assert len(prop.cases[0].disjuncts) == 2
    assert prop.cases[1].lower[0] == 1.19362e6
    np.testing.assert_array_equal(prop.cases[0].disjuncts[1].offset, [-1400])


def test_conjunction_lines_read_directly_as_the_general_reader_reads_them():
    # a line that is one `(and ...)` of bounds is read without the s-expression reader; a comment
    # on each line sends the same text through the general reader
    lines = ["(and (>= X_0 -0.0) (<= X_0 0.5) (>= X_1 1e-3) (<= X_1 2) (<= Y_0 -0))",
             "    (and (>= X_0 1) (<= X_0 1.5) (>= X_1 0) (<= X_1 .5) (>= Y_0 3) (<= Y_0 +4.25E1))"]
    direct, general = (parse_text(decls(2, 1) + "(assert (or\n" + "".join(line + end for line in lines) + "))")
                       for end in ("\n", " ; a comment\n"))
    assert len(direct.cases) == len(general.cases) == 2
    for mine, theirs in zip(direct.cases, general.cases):
        for side in ("lower", "upper"):
            np.testing.assert_array_equal(np.signbit(getattr(mine, side)), np.signbit(getattr(theirs, side)))
            np.testing.assert_array_equal(getattr(mine, side), getattr(theirs, side))
            assert [a.text for a in getattr(mine, f"{side}_from")] == [a.text for a in getattr(theirs, f"{side}_from")]
        (left,), (right,) = mine.disjuncts, theirs.disjuncts
        np.testing.assert_array_equal(left.matrix, right.matrix)
        np.testing.assert_array_equal(np.signbit(left.offset), np.signbit(right.offset))
        np.testing.assert_array_equal(left.offset, right.offset)
        assert [a.text for a in left.row_from] == [a.text for a in right.row_from]
    assert direct.cases[0].lower_from[0].text == "(>= X_0 -0.0)"
    for end in ("\n", " ; a comment\n"):
        with pytest.raises(VnnlibError, match=r"^p:5: variable X_7 is used but never declared$"):
            parse_text(decls(2, 1) + "(assert (or\n(and (>= X_0 0) (<= X_7 1))" + end + "))", "p")


def test_comments_tabs_blank_lines_and_declarations_after_asserts():
    text = "; header\n(declare-const Y_0 Real)\n\n\n(assert (<= Y_0 1)) ; trailing\n" \
           "(assert\t(>=\tX_0\t-0.5))\n(assert (<= X_0 5.8147645177086815e-05))\n(declare-const X_0 Real)\n"
    (case,) = parse_text(text).cases
    assert case.lower[0] == -0.5 and case.upper[0] == 5.8147645177086815e-05


def test_linear_terms_are_accepted():
    text = decls(1, 2) + box(1) + "(assert (<= (+ Y_0 (* 2 Y_1)) (- 3)))\n(assert (>= (- Y_0 Y_1) 1))"
    (disjunct,) = parse_text(text).cases[0].disjuncts
    np.testing.assert_array_equal(disjunct.matrix, [[1, 2], [-1, 1]])
    np.testing.assert_array_equal(disjunct.offset, [-3, -1])


def test_repeated_bounds_intersect():
    text = decls(1, 1) + "(assert (>= X_0 -1))(assert (>= X_0 -0.5))(assert (<= X_0 2))(assert (<= X_0 1))" \
                         "(assert (<= Y_0 0))"
    (case,) = parse_text(text).cases
    assert (case.lower[0], case.upper[0]) == (-0.5, 1.0)


def test_term_without_output_atoms_means_any_output_is_bad():
    (case,) = parse_text(decls(1, 1) + box(1)).cases
    assert case.disjuncts[0].matrix.shape == (0, 1)


@pytest.mark.parametrize("text,line,fragment", [
    (decls(1, 1) + box(1) + "(assert (<= Y_0 1)", 5, "unclosed"),
    (decls(1, 1) + box(1) + "(assert (<= Y_0 1)))", 5, "unbalanced"),
    (decls(1, 1) + box(1) + "(assert (<= Y_1 1))", 5, "never declared"),
    (decls(2, 1) + box(1) + "(assert (<= Y_0 1))", 2, "X_1 has no lower bound"),
    (decls(1, 2) + box(1) + "(assert (<= (* Y_0 Y_1) 1))", 6, "non-linear"),
    (decls(1, 1) + box(1) + "(assert (xor (<= Y_0 1) (<= Y_0 2)))", 5, "unknown operator 'xor'"),
    (decls(1, 1) + box(1) + "(assert (<= Y_0 (exp 1)))", 5, "unknown operator 'exp'"),
    (decls(1, 1) + box(1) + "(assert (<= X_0 Y_0))", 5, "mixes inputs"),
    (decls(1, 1) + box(1) + "(define-fun f () Real 1)", 5, "unknown command"),
    (decls(1, 1) + "(declare-const X_0 Real)", 3, "declared twice"),
    ("(declare-const X_0 Int)", 1, "unsupported sort"),
    ("(declare-const Z Real)", 1, "not of the form"),
    (decls(1, 1) + box(1) + "(assert (<= Y_0 1e))", 5, "neither a number"),
])
def test_user_errors_name_the_line(text, line, fragment):
    with pytest.raises(VnnlibError) as caught:
        parse_text(text, "prop.vnnlib")
    message = str(caught.value)
    assert message.startswith(f"prop.vnnlib:{line}: "), message
    assert fragment in message
    assert "\n" not in message


def test_empty_input_boxes_are_dropped():
    # Before: "input X_0 has lower bound 2.0 above its upper bound 1.0", an error for the whole file.
    every = parse_text(decls(1, 1) + "(assert (>= X_0 2))\n(assert (<= X_0 1))\n(assert (<= Y_0 1))")
    assert every.cases == []  # nothing can violate the property: unsat
    text = decls(2, 2) + """(assert (or
    (and (>= X_0 2) (<= X_0 1) (>= X_1 0) (<= X_1 1) (<= Y_0 0))
    (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (<= Y_1 0))
    (and (>= X_0 0) (<= X_0 1) (>= X_1 3) (<= X_1 -3) (<= Y_1 5))
))"""
    (case,) = parse_text(text).cases  # only the middle disjunct has a non-empty box
    np.testing.assert_array_equal(case.lower, [0, 0])
    (disjunct,) = case.disjuncts
    np.testing.assert_array_equal(disjunct.matrix, [[0, 1]])
    np.testing.assert_array_equal(disjunct.offset, [0])
    # an empty box that comes from a common assert empties every disjunct
    common = parse_text(decls(1, 2) + "(assert (<= X_0 -1))(assert (>= X_0 1))(assert (or (<= Y_0 0) (<= Y_1 0)))")
    assert common.cases == []
    # a point box is not empty
    (point,) = parse_text(decls(1, 1) + "(assert (<= X_0 0.5))(assert (>= X_0 0.5))(assert (<= Y_0 1))").cases
    assert point.lower[0] == point.upper[0] == 0.5


def test_sizes_are_checked_against_the_model():
    prop = parse_text(decls(3, 2) + box(3) + "(assert (<= Y_1 0))", "p.vnnlib")
    prop.check_sizes(3, 2)
    with pytest.raises(VnnlibError, match="X_2 is beyond the model's input size"):
        prop.check_sizes(2, 2)
    with pytest.raises(VnnlibError, match="never bounded"):
        prop.check_sizes(4, 2)
    with pytest.raises(VnnlibError, match="Y_1 is beyond"):
        prop.check_sizes(3, 1)


@pytest.mark.parametrize("text,line,fragment", [
    (decls(1, 1) + "(assert (>= X_0 -1))\n(assert (<= X_0 1e400))\n(assert (<= Y_0 1))", 4,
     "the number 1e400 overflows float64"),
    (decls(1, 1) + box(1) + "(assert (<= Y_0 -1.8e308))", 5, "the number -1.8e308 overflows float64"),
    (decls(1, 1) + box(1) + "(assert (<= (* 1e200 Y_0) (* 1e200 1e200)))", 5,
     "(<= (* 1e200 Y_0) (* 1e200 1e200)) overflows float64"),
    (decls(1, 1) + "(assert (>= X_0 -1))\n(assert (<= (* 1e-300 X_0) 1e300))\n(assert (<= Y_0 1))", 4,
     "(<= (* 1e-300 X_0) 1e300) gives X_0 a bound that overflows float64"),
])
def test_numbers_beyond_float64_are_user_errors(text, line, fragment):
    # Before: 1e400 read as inf, so the bound `X_0 <= inf` was silently no bound at all.
    with pytest.raises(VnnlibError) as caught:
        parse_text(text, "prop.vnnlib")
    message = str(caught.value)
    assert message.startswith(f"prop.vnnlib:{line}: "), message
    assert fragment in message and "\n" not in message


def test_values_beyond_the_model_dtype_are_user_errors_but_large_thresholds_are_kept():
    prop = parse_text(decls(2, 2) + "(assert (>= X_0 -1))\n(assert (<= X_0 1e39))\n(assert (>= X_1 -1e39))\n"
                      "(assert (<= X_1 1))\n(assert (<= Y_0 1))", "p.vnnlib")
    prop.check_dtype("float64")  # finite in float64: fine for a float64 model
    with pytest.raises(VnnlibError) as caught:
        prop.check_dtype("float32")
    assert str(caught.value).startswith("p.vnnlib:6: the upper bound 1e+39 of X_0 in (<= X_0 1e39) is beyond")
    assert "float32" in str(caught.value)
    lower_only = parse_text(decls(1, 1) + "(assert (>= X_0 -1e39))\n(assert (<= X_0 1))\n(assert (<= Y_0 1))", "p")
    with pytest.raises(VnnlibError, match=r"^p:3: the lower bound -1e\+39 of X_0 in \(>= X_0 -1e39\)"):
        lower_only.check_dtype("float32")
    # an output coefficient enters the float32 arithmetic too ...
    coefficient = parse_text(decls(1, 2) + box(1) + "(assert (<= (* 1e39 Y_1) 1))", "p")
    with pytest.raises(VnnlibError, match=r"^p:6: the coefficient 1e\+39 of Y_1 in \(<= \(\* 1e39 Y_1\) 1\)"):
        coefficient.check_dtype("float32")
    # ... but a threshold is compared in float64: large finite ones are kept, also after padding
    threshold = parse_text(decls(1, 1) + box(1) + "(assert (>= Y_0 1e300))", "p")
    threshold.check_dtype("float32")
    threshold.padded_to_outputs(3).check_dtype("float32")
    assert threshold.cases[0].disjuncts[0].offset[0] == -1e300
    # the largest float32 value itself is in range
    parse_text(decls(1, 1) + f"(assert (>= X_0 -{float(np.finfo(np.float32).max)!r}))(assert (<= X_0 1))",
               "p").check_dtype("float32")


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(VnnlibError, match="cannot read"):
        parse_file(tmp_path / "missing.vnnlib")
    path = tmp_path / "bad.vnnlib"
    path.write_bytes(b"(declare-const X_0 Real)\n\xff\xfe")
    with pytest.raises(VnnlibError, match=r"bad.vnnlib:2: the file is not UTF-8"):
        parse_file(path)


def _all_shared_properties() -> list:
    roots = [shared_or_skip()]
    with contextlib.suppress(pytest.skip.Exception):
        roots.append(opcoverage_or_skip())
    return sorted(p for root in roots for p in root.rglob("*.vnnlib"))


def test_every_shared_property_parses_into_finite_boxes():
    files = _all_shared_properties()
    assert len(files) >= 425
    for path in files:
        prop = parse_file(path)
        assert prop.cases, path
        for case in prop.cases:
            assert np.all(np.isfinite(case.lower)) and np.all(case.lower <= case.upper), path
