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

from verifier.vnnlib.errors import VnnlibError
from verifier.vnnlib.syntax import Atom, SExpr, SList

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
    """The atom `form <= 0`, from the comparison `source` at `line`."""

    form: Linear
    line: int
    source: SList | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        """The comparison as written (for messages)."""
        return unparse(self.source) if self.source is not None else ""


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


def read_script(exprs: list[SExpr], path: str) -> Script:
    """Collect declarations first (they may follow the asserts that use them), then the asserts."""
    variables: dict[str, Variable] = {}
    assert_bodies: list[SExpr] = []
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
            assert_bodies.append(expr.items[1])
        elif head not in _IGNORED_COMMANDS:
            raise VnnlibError(path, expr.line, f"unknown command '{head}'")
    reader = _FormulaReader(variables, path)
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


class _FormulaReader:
    def __init__(self, variables: dict[str, Variable], path: str) -> None:
        self.variables = variables
        self.path = path

    def error(self, line: int, problem: str) -> VnnlibError:
        return VnnlibError(self.path, line, problem)

    def formula(self, expr: SExpr) -> Formula:
        if isinstance(expr, Atom):
            raise self.error(expr.line, f"expected a formula, found '{expr.text}'")
        head = expr.head()
        if head in ("and", "or"):
            if len(expr.items) < 2:
                raise self.error(expr.line, f"'{head}' needs at least one argument")
            children = tuple(self.formula(child) for child in expr.items[1:])
            return And(children) if head == "and" else Or(children)
        if head in _COMPARISONS:
            return self.comparison(expr, head)
        if head is None:
            raise self.error(expr.line, "expected an operator after '('")
        raise self.error(expr.line, f"unknown operator '{head}'")

    def comparison(self, expr: SList, op: str) -> Formula:
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


def unparse(expr: SExpr) -> str:
    """The expression as source text, on one line (numbers keep their spelling)."""
    if isinstance(expr, Atom):
        return expr.text
    return "(" + " ".join(unparse(item) for item in expr.items) + ")"
