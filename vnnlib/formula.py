"""From s-expressions to declarations and a formula over linear comparisons.

The formula tree is deliberately more general than the 2021 files need (linear terms, chained
comparisons, `=`), so that VNN-LIB 2.0 style inputs have somewhere to go; anything outside it is
reported as an error rather than ignored.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

from verifier.vnnlib.errors import VnnlibError
from verifier.vnnlib.syntax import Atom, SExpr, SList, read_sexprs

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(\d+)")
_IGNORED_COMMANDS = {"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"}
_COMPARISONS = {"<=", ">=", "<", ">", "="}


@dataclass(frozen=True)
class Variable:
    """A declared variable: `kind` is 'X' (network input) or 'Y' (network output)."""

    kind: str
    index: int
    line: int


@dataclass
class Linear:
    """The linear form `sum(coeffs[name] * name) + constant`."""

    coeffs: dict[str, float] = field(default_factory=dict)
    constant: float = 0.0

    def scaled(self, factor: float) -> Linear:
        return Linear({k: v * factor for k, v in self.coeffs.items()}, self.constant * factor)

    def plus(self, other: Linear) -> Linear:
        coeffs = dict(self.coeffs)
        for name, value in other.coeffs.items():
            coeffs[name] = coeffs.get(name, 0.0) + value
        return Linear(coeffs, self.constant + other.constant)


@dataclass(frozen=True)
class Compare:
    """The atom `form <= 0` (`form < 0` when `strict`), from the comparison `source` at `line`.

    VNN-LIB 1.0 atoms are never strict (see `FormulaReader.comparison`); 2.0 queries keep it."""

    form: Linear
    line: int
    source: SList | None = field(default=None, compare=False, repr=False)
    written: str = field(default="", compare=False, repr=False)  # the source text, where no `source` is kept
    strict: bool = False

    @property
    def text(self) -> str:
        """The comparison as written (for messages)."""
        return unparse(self.source) if self.source is not None else self.written


@dataclass(frozen=True)
class And:
    children: tuple[Formula, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Formula, ...]


Formula = Compare | And | Or


@dataclass
class Script:
    """The declarations and the conjunction of all asserts of one file."""

    variables: dict[str, Variable]
    asserts: list[Formula]


# Lines that are one whole simple command, by far the most of large files: read without the
# s-expression reader (same declarations and comparisons, same errors, 4x faster).
_SIMPLE_DECLARATION = re.compile(r"\(declare-const ([XY])_(\d+) Real\)")
_SIMPLE_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_SIMPLE_BOUND = re.compile(rf"\(assert \((<=|>=) ([XY]_\d+) ({_SIMPLE_NUMBER})\)\)")
# Inside a command, a line that is one whole conjunction of such bounds (a box of a disjunctive
# property: nn4sys has 200 lines of 309 bounds each) is read directly too.
_SIMPLE_ATOM = re.compile(rf"(\((<=|>=) ([XY]_\d+) ({_SIMPLE_NUMBER})\))")
_SIMPLE_AND = re.compile(rf"\(and(?: \((?:<=|>=) [XY]_\d+ {_SIMPLE_NUMBER}\))+\)")
# the s-expression reader sees such a line as this atom (a NUL and the line's key): no file
# holds a NUL where the direct reading is used
_LINE_KEY = "\x00"


def read_script_text(text: str, path: str) -> Script:
    """`read_script` of the whole text, with its simple lines (a declaration, or a bound of one
    variable by a number) read directly where they stand at the top level."""
    variables: dict[str, Variable] = {}
    asserts: list[Formula] = []
    pending: list[str] = []  # the other lines, read by the s-expression reader in order
    pending_start, depth = 1, 0
    conjunctions: dict[str, list[_Pending]] = {}  # key -> the bounds of a conjunction line
    direct_lines = _LINE_KEY not in text

    def flush() -> None:
        if pending:
            exprs = read_sexprs("\n".join(pending), path, first_line=pending_start)
            _read_commands(exprs, path, variables, asserts)
            pending.clear()

    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        simple = depth == 0 and (_SIMPLE_DECLARATION.fullmatch(stripped) or _SIMPLE_BOUND.fullmatch(stripped))
        if simple and simple.re is _SIMPLE_BOUND and not math.isfinite(float(simple[3])):
            simple = None  # the general reader names the overflow
        if not simple:
            if not pending:
                pending_start = number
            conjunction = depth > 0 and direct_lines and _SIMPLE_AND.fullmatch(stripped)
            bounds = [_Pending(op, name, float(value), number, written)
                      for written, op, name, value in _SIMPLE_ATOM.findall(stripped)] if conjunction else []
            if bounds and all(math.isfinite(b.value) for b in bounds):  # balanced: depth stays
                key = f"{_LINE_KEY}{len(conjunctions)}"
                conjunctions[key] = bounds
                pending.append(key)
                continue
            pending.append(line)
            code = line.split(";", 1)[0]
            depth += code.count("(") - code.count(")")
            continue
        flush()
        if simple.re is _SIMPLE_DECLARATION:
            name = f"{simple[1]}_{simple[2]}"
            if name in variables:
                raise VnnlibError(path, number, f"variable {name} is declared twice")
            variables[name] = Variable(simple[1], int(simple[2]), number)
        else:
            asserts.append(_Pending(simple[1], simple[2], float(simple[3]), number, stripped[len("(assert "):-1]))
    flush()
    reader = FormulaReader(variables, path, conjunctions)
    return Script(variables, [reader.resolve(a) for a in asserts])


class _Pending(NamedTuple):  # a tuple: files have tens of thousands, made faster than a dataclass
    """A simple bound read from its line; resolved once every declaration is known."""

    op: str
    name: str
    value: float
    line: int
    written: str


def _read_commands(exprs: list[SExpr], path: str, variables: dict[str, Variable], asserts: list) -> None:
    for expr in exprs:
        if not isinstance(expr, SList) or expr.head() is None:
            raise VnnlibError(path, expr.line, "expected a command such as (declare-const ...) or (assert ...)")
        head = expr.head()
        if head == "declare-const":
            variable_name, variable = _declaration(expr, path)
            if variable_name in variables:
                raise VnnlibError(path, expr.line, f"variable {variable_name} is declared twice")
            variables[variable_name] = variable
        elif head == "assert":
            if len(expr.items) != 2:
                raise VnnlibError(path, expr.line, "assert takes exactly one formula")
            asserts.append(expr.items[1])
        elif head not in _IGNORED_COMMANDS:
            raise VnnlibError(path, expr.line, f"unknown command '{head}'")


def read_script(exprs: list[SExpr], path: str) -> Script:
    """Collect declarations first (they may follow the asserts that use them), then the asserts."""
    variables: dict[str, Variable] = {}
    assert_bodies: list[SExpr] = []
    _read_commands(exprs, path, variables, assert_bodies)
    reader = FormulaReader(variables, path)
    return Script(variables, [reader.formula(body) for body in assert_bodies])


def _declaration(expr: SList, path: str) -> tuple[str, Variable]:
    if len(expr.items) != 3 or not all(isinstance(item, Atom) for item in expr.items):
        raise VnnlibError(path, expr.line, "declare-const takes a name and a sort")
    name, sort = expr.items[1].text, expr.items[2].text  # type: ignore[union-attr]
    if sort != "Real":
        raise VnnlibError(path, expr.line, f"unsupported sort '{sort}' for {name} (only Real)")
    match = _VARIABLE.fullmatch(name)
    if match is None:
        raise VnnlibError(path, expr.line, f"variable name '{name}' is not of the form X_<i> or Y_<j>")
    return name, Variable(match.group(1), int(match.group(2)), expr.line)


class FormulaReader:
    """Formulas of `and`, `or` and the comparisons in `comparisons`; subclasses read other terms."""

    comparisons = _COMPARISONS

    def __init__(self, variables: dict[str, Variable], path: str,
                 conjunctions: dict[str, list[_Pending]] | None = None) -> None:
        self.variables = variables
        self.path = path
        self.conjunctions = conjunctions or {}  # lines read directly (read_script_text), by key

    def error(self, line: int, problem: str) -> VnnlibError:
        return VnnlibError(self.path, line, problem)

    def resolve(self, item) -> Formula:
        """The formula of an assert body, or of a simple bound read from its line (as `comparison`
        would read `(op name value)`)."""
        if not isinstance(item, _Pending):
            return self.formula(item)
        if item.name not in self.variables:
            raise self.error(item.line, f"variable {item.name} is used but never declared")
        return Compare(_bound_form(item.name, item.value, item.op == "<="), item.line, None, item.written)

    def formula(self, expr: SExpr) -> Formula:
        if isinstance(expr, Atom):
            bounds = self.conjunctions.get(expr.text)
            if bounds is not None:
                return And(tuple(self.resolve(bound) for bound in bounds))
            raise self.error(expr.line, f"expected a formula, found '{expr.text}'")
        head = expr.head()
        if head in ("and", "or"):
            if len(expr.items) < 2:
                raise self.error(expr.line, f"'{head}' needs at least one argument")
            children = tuple(self.formula(child) for child in expr.items[1:])
            return And(children) if head == "and" else Or(children)
        if head in self.comparisons:
            return self.comparison(expr, head)
        if head is None:
            raise self.error(expr.line, "expected an operator after '('")
        raise self.error(expr.line, f"unknown operator '{head}'")

    def comparison(self, expr: SList, op: str) -> Formula:
        if len(expr.items) == 3 and op != "=":
            bound = self._bound(expr, op)
            if bound is not None:
                return bound
        if len(expr.items) < 3:
            raise self.error(expr.line, f"'{op}' needs two arguments")
        terms = [self.term(item) for item in expr.items[1:]]
        atoms: list[Formula] = []
        for left, right in zip(terms, terms[1:]):
            # Strict comparisons are read as non-strict: that only enlarges the bad set, so an
            # unsat stays sound, and the competition checker has a tolerance anyway.
            if op in ("<=", "<"):
                forms = [left.plus(right.scaled(-1.0))]
            elif op in (">=", ">"):
                forms = [right.plus(left.scaled(-1.0))]
            else:
                forms = [left.plus(right.scaled(-1.0)), right.plus(left.scaled(-1.0))]
            for form in forms:
                if not (math.isfinite(form.constant) and all(map(math.isfinite, form.coeffs.values()))):
                    raise self.error(expr.line, f"{unparse(expr)} overflows float64 (its arithmetic gives a value that "
                                     "is not finite)")
                atoms.append(Compare(form, expr.line, expr))
        return atoms[0] if len(atoms) == 1 else And(tuple(atoms))

    def _bound(self, expr: SList, op: str) -> Compare | None:
        """A declared variable against a finite number, as the general path below reads it (the
        same float operations, so the same -0.0 and rounding), or None for anything else."""
        first, second = expr.items[1], expr.items[2]
        if not (isinstance(first, Atom) and isinstance(second, Atom)):
            return None
        if first.text in self.variables and _NUMBER.fullmatch(second.text):
            name, number, variable_first = first.text, second.text, True
        elif second.text in self.variables and _NUMBER.fullmatch(first.text):
            name, number, variable_first = second.text, first.text, False
        else:
            return None
        value = float(number)
        if not math.isfinite(value):
            return None
        # x <= c and c >= x: x - c <= 0; c <= x and x >= c: c - x <= 0
        return Compare(_bound_form(name, value, variable_first == (op in ("<=", "<"))), expr.line, expr)

    def term(self, expr: SExpr) -> Linear:
        if isinstance(expr, Atom):
            if _NUMBER.fullmatch(expr.text):
                value = float(expr.text)
                if not math.isfinite(value):
                    raise self.error(expr.line, f"the number {expr.text} overflows float64 (it would be infinite; "
                                     f"the largest finite value is {sys.float_info.max!r})")
                return Linear({}, value)
            if expr.text in self.variables:
                return Linear({expr.text: 1.0}, 0.0)
            if _VARIABLE.fullmatch(expr.text):
                raise self.error(expr.line, f"variable {expr.text} is used but never declared")
            raise self.error(expr.line, f"'{expr.text}' is neither a number nor a declared variable")
        head = expr.head()
        args = [self.term(item) for item in expr.items[1:]]
        if head == "+" and args:
            total = Linear()
            for arg in args:
                total = total.plus(arg)
            return total
        if head == "-" and len(args) == 1:
            return args[0].scaled(-1.0)
        if head == "-" and args:
            total = args[0]
            for arg in args[1:]:
                total = total.plus(arg.scaled(-1.0))
            return total
        if head == "*" and args:
            product = Linear({}, 1.0)
            for arg in args:
                if product.coeffs and arg.coeffs:
                    raise self.error(expr.line, "non-linear term: a product of two variables")
                if arg.coeffs:
                    product = arg.scaled(product.constant)
                else:
                    product = product.scaled(arg.constant)
            return product
        if head in _COMPARISONS or head in ("and", "or"):
            raise self.error(expr.line, f"'{head}' used where a number or variable was expected")
        raise self.error(expr.line, f"unknown operator '{head}' in a term")


def _bound_form(name: str, value: float, upper: bool) -> Linear:
    """`name <= value` (upper) or `name >= value` as `form <= 0`, with the float operations of the
    general path (`term`, `plus`, `scaled`), so the same -0.0 and rounding."""
    if upper:
        return Linear({name: 1.0}, 0.0 + -value)
    return Linear({name: 0.0 + -1.0}, value + -0.0)


def unparse(expr: SExpr) -> str:
    """The expression as source text, on one line (numbers keep their spelling)."""
    if isinstance(expr, Atom):
        return expr.text
    return "(" + " ".join(unparse(item) for item in expr.items) + ")"
