"""Tokenizer and s-expression reader for VNN-LIB (an SMT-LIB 2 subset).

The reader keeps the line of every token so that later stages can name the line of a problem.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from vnnlib.errors import VnnlibError

_TOKEN = re.compile(r";[^\n]*|\(|\)|[^\s();]+")


@dataclass(frozen=True)
class Atom:
    """A symbol or a numeral, with the 1-based line it starts on."""

    text: str
    line: int


@dataclass(frozen=True)
class SList:
    """A parenthesised list of expressions, with the line of its opening parenthesis."""

    items: tuple[Atom | SList, ...]
    line: int

    def head(self) -> str | None:
        """The operator symbol, when the list starts with an atom."""
        if self.items and isinstance(self.items[0], Atom):
            return self.items[0].text
        return None


SExpr = Atom | SList


def read_sexprs(text: str, path: str) -> list[SExpr]:
    """Read every top-level s-expression of `text`; comments run from `;` to the end of a line."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    stack: list[tuple[list[SExpr], int]] = []
    top: list[SExpr] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] == ";":
            continue
        line = bisect.bisect_right(line_starts, match.start())
        if token == "(":
            stack.append(([], line))
        elif token == ")":
            if not stack:
                raise VnnlibError(path, line, "unbalanced ')'")
            items, start = stack.pop()
            node = SList(tuple(items), start)
            (stack[-1][0] if stack else top).append(node)
        else:
            (stack[-1][0] if stack else top).append(Atom(token, line))
    if stack:
        raise VnnlibError(path, stack[-1][1], "unclosed '(' (the file ends inside this expression)")
    return top
