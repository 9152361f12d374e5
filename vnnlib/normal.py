"""Compile a VNN-LIB script into the normal form: input boxes, each with a disjunction of `C y <= d`.

A property is violated (the query is `sat`) iff for some case, some x in its box and some
disjunct k, every row of `C_k f(x) <= d_k` holds. A term of the disjunctive normal form that no
input satisfies (its box is empty, some lower bound above its upper bound, or it holds a false
constant comparison) is dropped; a property left without cases cannot be violated (`unsat`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from verifier.vnnlib.errors import VnnlibError
from verifier.vnnlib.formula import And, Compare, Formula, Or, Script, Variable

MAX_TERMS = 10_000


@dataclass(frozen=True)
class Disjunct:
    """One conjunction of output rows: `matrix @ y <= offset` (float64, shapes [m, n_out] and [m]),
    `<` in the rows marked `strict` (empty: none is).

    `row_from` holds the comparison each row comes from (for messages; empty when unknown).
    """

    matrix: np.ndarray
    offset: np.ndarray
    row_from: tuple[Compare, ...] = field(default=(), compare=False, repr=False)
    strict: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Case:
    """One input box (flat float64 vectors over the inputs) and the disjuncts that are bad inside it.

    `lower_from` / `upper_from` hold the comparison that set each bound (for messages; empty when unknown).
    """

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: tuple[Disjunct, ...]
    lower_from: tuple[Compare, ...] = field(default=(), compare=False, repr=False)
    upper_from: tuple[Compare, ...] = field(default=(), compare=False, repr=False)


@dataclass
class Property:
    """The compiled property of one VNN-LIB file."""

    path: str
    num_inputs: int
    num_outputs: int
    cases: list[Case]
    declaration_lines: dict[str, int] = field(default_factory=dict)
    # How far a counterexample may miss the property and still be accepted by the checker that
    # scores the answer: the competition's 1e-4 for VNN-LIB 1.0 (a proof keeps that margin); 0
    # for 2.0 queries, which are decided exactly.
    checker_slack: float = 1e-4
    # Whether the networks are taken in exact arithmetic (a 2.0 query whose tensors are all
    # `real`), so that bounds need no allowance for the deployed model's rounding.
    real_arithmetic: bool = False

    def check_sizes(self, model_inputs: int, model_outputs: int) -> None:
        """Raise VnnlibError unless the variables fit a model with these flat input/output sizes."""
        if self.num_inputs > model_inputs:
            name = f"X_{self.num_inputs - 1}"
            raise VnnlibError(
                self.path, self.declaration_lines.get(name),
                f"{name} is beyond the model's input size ({model_inputs} values)",
            )
        if self.num_inputs < model_inputs:
            raise VnnlibError(
                self.path, None,
                f"the model has {model_inputs} inputs but only X_0..X_{self.num_inputs - 1} are declared "
                f"and bounded (X_{self.num_inputs} is never bounded)",
            )
        if self.num_outputs > model_outputs:
            name = f"Y_{self.num_outputs - 1}"
            raise VnnlibError(
                self.path, self.declaration_lines.get(name),
                f"{name} is beyond the model's output size ({model_outputs} values)",
            )

    def check_dtype(self, dtype: str) -> None:
        """Raise VnnlibError unless the values that enter the model's arithmetic fit its dtype.

        The parser already refuses numbers beyond float64. For a float32 model, an input bound or
        an output coefficient beyond float32's range would be infinite there. Output thresholds
        (the offsets `d`) are compared in float64, so any finite one is kept.
        """
        largest = float(np.finfo(dtype).max)
        problems: list[tuple[int, str]] = []  # (line, problem): the first line of the file is reported
        for case in self.cases:
            for side, bounds, sources in (("lower", case.lower, case.lower_from),
                                          ("upper", case.upper, case.upper_from)):
                for i in np.flatnonzero(np.abs(bounds) > largest)[:1]:
                    source = sources[i] if sources else None
                    problems.append((source.line if source else 0,
                                     f"the {side} bound {float(bounds[i])!r} of X_{i}{_quoted(source)} is beyond "
                                     f"the range of the model's {dtype} inputs (largest finite value {largest!r})"))
            for disjunct in case.disjuncts:
                for r in np.flatnonzero((np.abs(disjunct.matrix) > largest).any(axis=1))[:1]:
                    source = disjunct.row_from[r] if disjunct.row_from else None
                    j = int(np.flatnonzero(np.abs(disjunct.matrix[r]) > largest)[0])
                    problems.append((source.line if source else 0,
                                     f"the coefficient {float(disjunct.matrix[r, j])!r} of Y_{j}{_quoted(source)} is "
                                     f"beyond the range of the model's {dtype} outputs (largest finite value "
                                     f"{largest!r})"))
        if problems:
            line, problem = min(problems)
            raise VnnlibError(self.path, line or None, problem)

    def padded_to_outputs(self, model_outputs: int) -> Property:
        """The same property with every matrix widened to `model_outputs` columns."""
        extra = model_outputs - self.num_outputs
        if extra == 0:
            return self
        cases = [
            Case(c.lower, c.upper, tuple(
                Disjunct(np.pad(d.matrix, ((0, 0), (0, extra))), d.offset, d.row_from, d.strict) for d in c.disjuncts
            ), c.lower_from, c.upper_from)
            for c in self.cases
        ]
        return dataclasses.replace(self, num_outputs=model_outputs, cases=cases)


def _quoted(source: Compare | None) -> str:
    return f" in {source.text}" if source is not None and source.text else ""


def compile_script(script: Script, path: str) -> Property:
    """Push the conjunction of asserts into DNF, split atoms into input bounds and output rows."""
    inputs = _indexed(script.variables, "X", path)
    outputs = _indexed(script.variables, "Y", path)
    if not inputs:
        raise VnnlibError(path, None, "no input variable X_<i> is declared")
    kinds = {name: (v.kind, v.index) for name, v in script.variables.items()}
    conjuncts = _flatten_and(script.asserts)
    common = [c for c in conjuncts if isinstance(c, Compare)]
    disjunctive = [c for c in conjuncts if not isinstance(c, Compare)]
    term_lists = [_dnf(f, path) for f in disjunctive]
    total = 1
    for terms in term_lists:
        total *= len(terms)
        if total > MAX_TERMS:
            raise VnnlibError(path, None, f"the disjunctive normal form has more than {MAX_TERMS} terms")
    builder = _TermBuilder(len(inputs), len(outputs), kinds, path)
    base = builder.start()
    for atom in common:
        builder.add(base, atom)
    grouped: dict[tuple[bytes, bytes], list[Disjunct]] = {}
    boxes: dict[tuple[bytes, bytes], _Term] = {}
    for combination in itertools.product(*term_lists):
        term = builder.copy(base)
        for atom in itertools.chain.from_iterable(combination):
            builder.add(term, atom)
        lower, upper = np.array(term.lower), np.array(term.upper)
        if term.infeasible or np.any(lower > upper):
            continue  # no input satisfies this term (a false constant, or an empty box): nothing to refute
        disjunct = builder.finish(term, lower, upper, script.variables)
        key = (lower.tobytes(), upper.tobytes())
        boxes.setdefault(key, (lower, upper, term))
        grouped.setdefault(key, []).append(disjunct)
    cases = [Case(boxes[k][0], boxes[k][1], tuple(ds), tuple(boxes[k][2].lower_from), tuple(boxes[k][2].upper_from))
             for k, ds in grouped.items()]
    lines = {name: v.line for name, v in script.variables.items()}
    return Property(path, len(inputs), len(outputs), cases, lines)


def _indexed(variables: dict[str, Variable], kind: str, path: str) -> list[Variable]:
    found = sorted((v for v in variables.values() if v.kind == kind), key=lambda v: v.index)
    for expected, variable in enumerate(found):
        if variable.index != expected:
            raise VnnlibError(
                path, variable.line,
                f"{kind}_{expected} is not declared, but {kind}_{variable.index} is "
                f"(variables must be {kind}_0, {kind}_1, ...)",
            )
    return found


def _flatten_and(formulas: list[Formula]) -> list[Formula]:
    out: list[Formula] = []
    for f in formulas:
        if isinstance(f, And):
            out.extend(_flatten_and(list(f.children)))
        else:
            out.append(f)
    return out


def _dnf(formula: Formula, path: str) -> list[list[Compare]]:
    if isinstance(formula, Compare):
        return [[formula]]
    if isinstance(formula, Or):
        return [term for child in formula.children for term in _dnf(child, path)]
    if all(isinstance(child, Compare) for child in formula.children):
        return [list(formula.children)]  # one term, not rebuilt once per comparison (quadratic)
    terms: list[list[Compare]] = [[]]
    for child in formula.children:
        child_terms = _dnf(child, path)
        if len(terms) * len(child_terms) > MAX_TERMS:
            raise VnnlibError(path, None, f"the disjunctive normal form has more than {MAX_TERMS} terms")
        terms = [a + b for a in terms for b in child_terms]
    return terms


@dataclass
class _Term:
    lower: list[float]  # lists while atoms are added: a numpy element costs more to read and write
    upper: list[float]
    lower_from: list[Compare | None]  # the comparison that set each bound
    upper_from: list[Compare | None]
    rows: list[tuple[np.ndarray, float, Compare]]
    infeasible: bool = False


class _TermBuilder:
    def __init__(self, num_inputs: int, num_outputs: int, kinds: dict[str, tuple[str, int]], path: str):
        self.num_inputs = num_inputs
        self.num_outputs = num_outputs
        self.kinds = kinds
        self.path = path

    def start(self) -> _Term:
        n = self.num_inputs
        return _Term([-math.inf] * n, [math.inf] * n, [None] * n, [None] * n, [])

    def copy(self, term: _Term) -> _Term:
        return _Term(list(term.lower), list(term.upper), list(term.lower_from),
                     list(term.upper_from), list(term.rows), term.infeasible)

    def add(self, term: _Term, atom: Compare) -> None:
        coeffs = atom.form.coeffs
        if len(coeffs) != 1 or 0.0 in coeffs.values():  # one nonzero coefficient: most atoms, as they are
            coeffs = {k: v for k, v in coeffs.items() if v != 0.0}
        constant = atom.form.constant
        if not coeffs:
            if constant > 0 or (atom.strict and constant == 0):  # a false constant comparison empties this term
                term.infeasible = True
            return
        kinds = {self.kinds[name][0] for name in coeffs}
        if kinds == {"X", "Y"}:
            raise VnnlibError(self.path, atom.line, "a constraint mixes inputs (X) and outputs (Y)")
        if kinds == {"X"}:
            if len(coeffs) != 1:
                raise VnnlibError(self.path, atom.line, "input constraints must bound a single input "
                                  "(linear constraints over several inputs are unsupported)")
            (name, coeff), = coeffs.items()
            index = self.kinds[name][1]
            bound = -constant / coeff + 0.0  # no negative zero
            if not math.isfinite(bound):
                raise VnnlibError(self.path, atom.line, f"{atom.text} gives {name} a bound that overflows float64")
            if coeff > 0:  # coeff * x + constant <= 0  ->  x <= bound
                if bound < term.upper[index]:
                    term.upper[index], term.upper_from[index] = bound, atom
            elif bound > term.lower[index]:
                term.lower[index], term.lower_from[index] = bound, atom
            return
        row = np.zeros(self.num_outputs)
        for name, coeff in coeffs.items():
            row[self.kinds[name][1]] += coeff
        term.rows.append((row, -constant, atom))

    def finish(self, term: _Term, lower: np.ndarray, upper: np.ndarray, variables: dict[str, Variable]) -> Disjunct:
        """The disjunct of a term whose box is [lower, upper] (raises if an input is unbounded)."""
        for bounds, side in ((lower, "lower"), (upper, "upper")):
            missing = np.flatnonzero(~np.isfinite(bounds))
            if missing.size:
                name = f"X_{missing[0]}"
                raise VnnlibError(self.path, variables[name].line, f"input {name} has no {side} bound")
        if term.rows:
            matrix = np.stack([r for r, _, _ in term.rows])
            offset = np.array([d for _, d, _ in term.rows])
        else:
            matrix, offset = np.zeros((0, self.num_outputs)), np.zeros(0)
        sources = tuple(source for _, _, source in term.rows)
        strict = tuple(source.strict for source in sources)
        return Disjunct(matrix, offset, sources, strict if any(strict) else ())
