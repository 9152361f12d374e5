"""VNN-LIB 2.0 queries: networks with typed tensors, polynomial terms, and their normal form.

A query declares networks (inputs, hidden tensors, outputs; `equal-to` and `isomorphic-to`
relations) and asserts comparisons of polynomials over tensor elements. `Query.compile()` gives
the normal form the engine decides (`Property`, boxes with `C z <= d`) over two flat vectors:
x, every network's inputs in declaration order, and z, the *observables*: the elements and
products of elements that the comparisons other than input bounds read (`Observable`). The
model that computes z from x is composed by `verifier.compose`.

Strict comparisons of outputs stay strict rows of the normal form (`Disjunct.strict`); strict
input bounds become non-strict box bounds (the box only grows, so a proof stays sound).
Counterexamples are re-checked on the query itself (`Query.holds`), strictly. A query is decided
exactly (`Property.checker_slack` 0), and in real arithmetic where every tensor is declared `real`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from verifier.vnnlib.errors import VnnlibError
from verifier.vnnlib.formula import And, Compare, Formula, FormulaReader, Linear, Or, Script, Variable, unparse
from verifier.vnnlib.normal import Property, compile_script
from verifier.vnnlib.syntax import Atom, SExpr, SList, read_sexprs

# 2.0 tokens: also quoted ONNX tensor names and bracketed index lists or shapes, each one token
# (a stray `]`, `"` or `[` is an atom of its own, which no rule accepts: never dropped)
TOKEN = re.compile(r'\(|\)|"(?:[^"\\]|\\.)*"|\[[^\]]*\]|[^\s();\[\]"]+|\S')
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
FLOAT_TYPES = ("float16", "float32", "float64", "bfloat16")
INTEGER_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")
ELEMENT_TYPES = (*FLOAT_TYPES, *INTEGER_TYPES, "float8e4m3fn", "float8e5m2", "float8e4m3fnuz", "float8e5m2fnuz",
                 "float4e2m1", "complex64", "complex128", "real")
_ROLES = {"declare-input": "input", "declare-hidden": "hidden", "declare-output": "output"}
_RELATIONS = ("equal-to", "isomorphic-to")
_COMPARISONS = ("<=", ">=", "<", ">", "==", "!=")
_LARGEST = float(np.finfo(np.float32).max)  # the range taken for inputs of other types (real, bfloat16)


def is_version_2(text: str) -> bool:
    """Whether a VNN-LIB source declares version 2 (its first command is `(vnnlib-version <2.x>)`)."""
    stripped = re.sub(r";[^\n]*", "", text).lstrip()
    return re.match(r"\(\s*vnnlib-version\s+<\s*2\.", stripped) is not None


@dataclass(frozen=True)
class Tensor:
    """A declared tensor of one network: `role` input, hidden or output; `onnx_name` for hidden ones."""

    name: str
    network: str
    role: str
    dtype: str
    shape: tuple[int, ...]
    line: int
    onnx_name: str | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Network:
    """A declared network; `relation` is ('equal-to' | 'isomorphic-to', other network) or None."""

    name: str
    line: int
    relation: tuple[str, str] | None
    inputs: list[Tensor]
    hidden: list[Tensor]
    outputs: list[Tensor]

    @property
    def tensors(self) -> list[Tensor]:
        return [*self.inputs, *self.hidden, *self.outputs]


Element = tuple[str, int]              # (tensor name, flat row-major index)
Monomial = tuple[Element, ...]         # sorted; () is the constant monomial


@dataclass(frozen=True)
class Atom2:
    """The comparison `poly <= 0` (`< 0` when strict) of a query, from `source` at `line`."""

    poly: dict[Monomial, float]
    strict: bool
    line: int
    source: SList | None = field(default=None, compare=False, repr=False)


Formula2 = Atom2 | And | Or


@dataclass(frozen=True)
class Observable:
    """One entry of z: the product of `elements` (one element: that element itself)."""

    elements: Monomial


@dataclass
class Query:
    path: str
    networks: list[Network]
    asserts: list[Formula2]

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {t.name: t for network in self.networks for t in network.tensors}

    @property
    def inputs(self) -> list[Tensor]:
        return [t for network in self.networks for t in network.inputs]

    def compile(self, input_types: dict[str, str] | None = None) -> tuple[Property, list[Observable]]:
        """The normal form over (x, z) and the observables z is made of (see the module docstring).

        An input that no assertion bounds ranges over the finite values of its type: the ONNX
        input's (`input_types`, tensor name -> float16/32/64) where given, else the declared one
        (float32 for `real` and other types)."""
        offsets, start = {}, 0
        for tensor in self.inputs:
            offsets[tensor.name] = start
            start += tensor.size
        observables: dict[Monomial, int] = {}
        variables = {f"X_{i}": Variable("X", i, 0) for i in range(start)}

        def linear(atom: Atom2) -> Compare:
            terms = [(m, c) for m, c in atom.poly.items() if m and c != 0.0]
            bound = len(terms) == 1 and len(terms[0][0]) == 1 and terms[0][0][0][0] in offsets
            form = Linear({}, atom.poly.get((), 0.0))
            for monomial, coeff in terms:
                if bound:
                    name = f"X_{offsets[monomial[0][0]] + monomial[0][1]}"
                else:
                    index = observables.setdefault(monomial, len(observables))
                    name = f"Y_{index}"
                    variables.setdefault(name, Variable("Y", index, atom.line))
                form = form.plus(Linear({name: coeff}, 0.0))
            return Compare(form, atom.line, atom.source, strict=atom.strict)

        def lower(formula: Formula2) -> Formula:
            if isinstance(formula, Atom2):
                return linear(formula)
            children = tuple(lower(child) for child in formula.children)
            return And(children) if isinstance(formula, And) else Or(children)

        asserts = [lower(f) for f in self.asserts]
        # an input no assertion bounds ranges over its type's finite values (inf and NaN excluded)
        for tensor in self.inputs:
            dtype = (input_types or {}).get(tensor.name, tensor.dtype)
            largest = float(np.finfo(dtype).max) if dtype in FLOAT_TYPES[:3] else _LARGEST
            for i in range(tensor.size):
                name = f"X_{offsets[tensor.name] + i}"
                asserts.append(Compare(Linear({name: -1.0}, -largest), tensor.line))
                asserts.append(Compare(Linear({name: 1.0}, -largest), tensor.line))
        try:
            prop = compile_script(Script(variables, asserts), self.path)
        except VnnlibError as error:  # name inputs as the query does, not by their flat index
            raise VnnlibError(self.path, error.line, re.sub(r"X_(\d+)", lambda m: self.input_element(int(m[1])),
                                                            error.problem)) from None
        prop.checker_slack = 0.0
        prop.real_arithmetic = all(t.dtype == "real" for network in self.networks for t in network.tensors)
        ordered = sorted(observables.items(), key=lambda item: item[1])
        return prop, [Observable(monomial) for monomial, _ in ordered]

    def input_element(self, flat: int) -> str:
        """The name of input element `flat` of x, as the query writes it (`X[0,1]`)."""
        for tensor in self.inputs:
            if flat < tensor.size:
                return element_name(tensor, flat)
            flat -= tensor.size
        return f"input {flat}"

    def holds(self, values: dict[str, np.ndarray]) -> bool:
        """Whether every assertion holds, in float64, for the tensors' values (flat arrays by name)."""

        def value(formula: Formula2) -> bool:
            if isinstance(formula, Atom2):
                total = 0.0
                for monomial, coeff in formula.poly.items():
                    term = coeff
                    for name, index in monomial:
                        term *= float(values[name][index])
                    total += term
                return total < 0 if formula.strict else total <= 0
            results = (value(child) for child in formula.children)
            return all(results) if isinstance(formula, And) else any(results)

        return all(value(f) for f in self.asserts)


def element_name(tensor: Tensor, flat: int) -> str:
    if not tensor.shape:
        return tensor.name
    index = np.unravel_index(flat, tensor.shape)
    return f"{tensor.name}[{','.join(str(int(i)) for i in index)}]"


def parse_query(text: str, path: str) -> Query:
    """Read a VNN-LIB 2.0 query; raises VnnlibError (one line: file, line, problem) on bad input."""
    exprs = read_sexprs(text, path, TOKEN)
    reader = _Reader(path)
    networks: list[Network] = []
    asserts: list[Formula2] = []
    version_seen = False
    for expr in exprs:
        if not isinstance(expr, SList) or expr.head() is None:
            raise VnnlibError(path, expr.line, "expected a command such as (declare-network ...) or (assert ...)")
        head = expr.head()
        if head == "vnnlib-version":
            if version_seen or networks or asserts:
                raise VnnlibError(path, expr.line, "(vnnlib-version ...) must come first, once")
            version_seen = True
            _check_version(expr, path)
        elif head == "declare-network":
            if asserts:
                raise VnnlibError(path, expr.line, "networks must be declared before the assertions")
            networks.append(reader.network(expr, networks))
        elif head == "assert":
            if not networks:
                raise VnnlibError(path, expr.line, "an assertion before any declare-network")
            if len(expr.items) != 2:
                raise VnnlibError(path, expr.line, "assert takes exactly one formula")
            asserts.append(reader.formula(expr.items[1]))
        else:
            raise VnnlibError(path, expr.line, f"unknown command '{head}'")
    if not version_seen:
        raise VnnlibError(path, 1, "a VNN-LIB 2.0 query starts with (vnnlib-version <2.0>)")
    if not networks:
        raise VnnlibError(path, None, "no network is declared")
    return Query(path, networks, asserts)


def _check_version(expr: SList, path: str) -> None:
    words = "".join(item.text for item in expr.items[1:] if isinstance(item, Atom))
    match = re.fullmatch(r"<(\d+)\.(\d+)>", words)
    if len(expr.items) < 2 or match is None:
        raise VnnlibError(path, expr.line, "the version is written (vnnlib-version <2.0>)")
    if match[1] != "2":
        raise VnnlibError(path, expr.line, f"VNN-LIB version {match[1]}.{match[2]} is not 2.x")


class _Reader(FormulaReader):
    """Declarations, and formulas over polynomial terms of tensor elements."""

    comparisons = _COMPARISONS

    def __init__(self, path: str) -> None:
        super().__init__({}, path)
        self.tensors: dict[str, Tensor] = {}
        self.network_names: set[str] = set()

    def network(self, expr: SList, earlier: list[Network]) -> Network:
        items = expr.items
        if len(items) < 2 or not isinstance(items[1], Atom) or not _NAME.fullmatch(items[1].text):
            raise self.error(expr.line, "declare-network takes a name, then its declarations")
        name = items[1].text
        if name in self.network_names or name in self.tensors:
            raise self.error(expr.line, f"the name {name} is declared twice")
        self.network_names.add(name)
        relation = None
        roles: dict[str, list[Tensor]] = {"input": [], "hidden": [], "output": []}
        order = ["input", "hidden", "output"]
        reached = 0
        for item in items[2:]:
            head = item.head() if isinstance(item, SList) else None
            if head in _RELATIONS:
                if relation is not None or any(roles.values()):
                    raise self.error(item.line, f"({head} ...) comes once, before the tensors of {name}")
                relation = (head, self._related(item, head, earlier))
            elif head in _ROLES:
                role = _ROLES[head]
                if order.index(role) < reached:
                    raise self.error(item.line, f"{head} after the {order[reached]}s of {name} (inputs, then "
                                     "hidden tensors, then outputs)")
                reached = order.index(role)
                roles[role].append(self.tensor(item, name, role))
            else:
                raise self.error(item.line if isinstance(item, SList) else item.line,
                                 f"unexpected {unparse(item)} in declare-network {name}")
        if not roles["input"] or not roles["output"]:
            raise self.error(expr.line, f"network {name} needs at least one declare-input and one declare-output")
        network = Network(name, expr.line, relation, roles["input"], roles["hidden"], roles["output"])
        if relation is not None:
            self._check_relation(network, next(n for n in earlier if n.name == relation[1]))
        return network

    def _related(self, item: SList, head: str, earlier: list[Network]) -> str:
        if len(item.items) != 2 or not isinstance(item.items[1], Atom):
            raise self.error(item.line, f"({head} NETWORK) names one earlier network")
        other = item.items[1].text
        target = next((n for n in earlier if n.name == other), None)
        if target is None:
            raise self.error(item.line, f"({head} {other}): no network {other} is declared before it")
        if target.relation is not None:
            raise self.error(item.line, f"({head} {other}): {other} is itself {target.relation[0]} "
                             f"{target.relation[1]} (no chains)")
        return other

    def _check_relation(self, network: Network, target: Network) -> None:
        kind = network.relation[0]
        for role in ("inputs", "outputs"):
            mine, theirs = getattr(network, role), getattr(target, role)
            same = len(mine) == len(theirs) and all(
                a.shape == b.shape and (kind == "isomorphic-to" or a.dtype == b.dtype) for a, b in zip(mine, theirs))
            if not same:
                raise self.error(network.line, f"network {network.name} is {kind} {target.name} but its {role} differ "
                                 f"in number, shape{'' if kind == 'isomorphic-to' else ' or element type'}")

    def tensor(self, item: SList, network: str, role: str) -> Tensor:
        words = item.items[1:]
        wanted = 4 if role == "hidden" else 3
        head = item.head()
        if len(words) != wanted or not all(isinstance(w, Atom) for w in words):
            extra = ' "onnx tensor name"' if role == "hidden" else ""
            raise self.error(item.line, f"({head} NAME TYPE [d1,...]{extra})")
        name, dtype, shape = (w.text for w in words[:3])
        if not _NAME.fullmatch(name):
            raise self.error(item.line, f"'{name}' is not a valid name")
        if name in self.tensors or name in self.network_names:
            raise self.error(item.line, f"the name {name} is declared twice")
        if dtype not in ELEMENT_TYPES:
            raise self.error(item.line, f"unknown element type '{dtype}' of {name}")
        tensor = Tensor(name, network, role, dtype, self.shape(shape, item.line, name), item.line,
                        self.onnx_name(words[3].text, item.line) if role == "hidden" else None)
        self.tensors[name] = tensor
        return tensor

    def shape(self, text: str, line: int, name: str) -> tuple[int, ...]:
        match = re.fullmatch(r"\[\s*((\d+\s*,\s*)*\d+)?\s*\]", text)
        if match is None:
            raise self.error(line, f"the shape of {name} is written [d1,d2,...], not '{text}'")
        dims = tuple(int(d) for d in text.strip("[] ").replace(" ", "").split(",") if d)
        if any(d < 1 for d in dims):
            raise self.error(line, f"the shape {text} of {name} has a dimension below 1")
        return dims

    def onnx_name(self, text: str, line: int) -> str:
        if len(text) < 2 or text[0] != '"' or text[-1] != '"':
            raise self.error(line, f'the ONNX tensor of a hidden declaration is a quoted string, not {text}')
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), text[1:-1])

    def comparison(self, expr: SList, op: str) -> Formula2:
        operands = self.operands(expr)
        if len(operands) != 2:
            raise self.error(expr.line, f"'{op}' compares exactly two terms")
        left, right = (self.term(item) for item in operands)
        difference = _add(left, _scale(right, -1.0))
        for value in difference.values():
            if not math.isfinite(value):
                raise self.error(expr.line, f"{unparse(expr)} overflows float64")
        if op in ("<=", "<"):
            return Atom2(difference, op == "<", expr.line, expr)
        if op in (">=", ">"):
            return Atom2(_scale(difference, -1.0), op == ">", expr.line, expr)
        below, above = Atom2(difference, op == "!=", expr.line, expr), Atom2(_scale(difference, -1.0), op == "!=",
                                                                             expr.line, expr)
        return And((below, above)) if op == "==" else Or((below, above))

    def operands(self, expr: SList) -> list[SExpr]:
        """The list's operands, with each name and the index list after it as one element reference."""
        grouped: list[SExpr] = []
        for item in expr.items[1:]:
            if (isinstance(item, Atom) and item.text.startswith("[") and grouped and isinstance(grouped[-1], Atom)
                    and _NAME.fullmatch(grouped[-1].text)):
                grouped[-1] = Atom(grouped[-1].text + item.text, grouped[-1].line)
            else:
                grouped.append(item)
        return grouped

    def term(self, expr: SExpr) -> dict[Monomial, float]:
        if isinstance(expr, Atom):
            return self.atom_term(expr)
        head = expr.head()
        args = [self.term(item) for item in self.operands(expr)]
        if head == "+" and args:
            total: dict[Monomial, float] = {}
            for arg in args:
                total = _add(total, arg)
            return total
        if head == "-" and len(args) == 1:
            return _scale(args[0], -1.0)
        if head == "-" and args:
            total = args[0]
            for arg in args[1:]:
                total = _add(total, _scale(arg, -1.0))
            return total
        if head == "*" and args:
            product: dict[Monomial, float] = {(): 1.0}
            for arg in args:
                product = _multiply(product, arg)
            return product
        if head in _COMPARISONS or head in ("and", "or"):
            raise self.error(expr.line, f"'{head}' used where a number or variable was expected")
        raise self.error(expr.line, f"unknown operator '{head}' in a term")

    def atom_term(self, expr: Atom) -> dict[Monomial, float]:
        text = expr.text
        if _NUMBER.fullmatch(text):
            value = float(text)
            if not math.isfinite(value):
                raise self.error(expr.line, f"the number {text} overflows float64")
            return {(): value}
        match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_]*)(\[([^\]]*)\])?", text)
        if match is None:
            raise self.error(expr.line, f"'{text}' is neither a number nor a tensor element")
        name = match[1]
        tensor = self.tensors.get(name)
        if tensor is None:
            raise self.error(expr.line, f"{name} is used but never declared")
        if match[2] is None:
            if tensor.shape:
                raise self.error(expr.line, f"{name} has shape [{','.join(map(str, tensor.shape))}]: index it, "
                                 f"as {name}[{','.join('0' for _ in tensor.shape)}]")
            return {((name, 0),): 1.0}
        parts = [p.strip() for p in match[3].split(",")] if match[3].strip() else []
        if not all(re.fullmatch(r"\d+", p) for p in parts):
            raise self.error(expr.line, f"the index of {text} is not a list of whole numbers")
        index = tuple(int(p) for p in parts)
        if len(index) != len(tensor.shape):
            raise self.error(expr.line, f"{text} has {len(index)} indices but {name} has {len(tensor.shape)} "
                             f"dimensions")
        if any(i >= d for i, d in zip(index, tensor.shape)):
            raise self.error(expr.line, f"{text} is outside {name}'s shape [{','.join(map(str, tensor.shape))}]")
        flat = int(np.ravel_multi_index(index, tensor.shape)) if index else 0
        return {((name, flat),): 1.0}


def _scale(poly: dict[Monomial, float], factor: float) -> dict[Monomial, float]:
    return {m: c * factor for m, c in poly.items()}


def _add(first: dict[Monomial, float], second: dict[Monomial, float]) -> dict[Monomial, float]:
    total = dict(first)
    for monomial, coeff in second.items():
        total[monomial] = total.get(monomial, 0.0) + coeff
    return total


def _multiply(first: dict[Monomial, float], second: dict[Monomial, float]) -> dict[Monomial, float]:
    product: dict[Monomial, float] = {}
    for m1, c1 in first.items():
        for m2, c2 in second.items():
            monomial = tuple(sorted(m1 + m2))
            product[monomial] = product.get(monomial, 0.0) + c1 * c2
    return product
