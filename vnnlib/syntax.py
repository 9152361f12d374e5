"""Tokenizer and s-expression reader for VNN-LIB (an SMT-LIB 2 subset).

The reader keeps the line of every token so that later stages can name the line of a problem.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from verifier.vnnlib.errors import VnnlibError

_TOKEN = re.compile(r"\n|;[^\n]*|\(|\)|[^\s();]+")


class Atom(NamedTuple):
    """A symbol or a numeral, with the 1-based line it starts on."""

    text: str
    line: int


class SList(NamedTuple):
    """A parenthesised list of expressions, with the line of its opening parenthesis."""

    items: tuple
    line: int

    def head(self) -> str | None:
        """The operator symbol, when the list starts with an atom."""
        if self.items and isinstance(self.items[0], Atom):
            return self.items[0].text
        return None


SExpr = Atom | SList


def read_sexprs(text: str, path: str, token: re.Pattern = _TOKEN) -> list[SExpr]:
    """Read every top-level s-expression of `text`; comments run from `;` to the end of a line.

    `token` matches newlines, comments, parentheses and atoms (VNN-LIB 2.0 adds strings and
    bracketed lists)."""
    stack: list[tuple[list[SExpr], int]] = []
    current: list[SExpr] = []
    top = current
    line = 1
    for word in token.findall(text):
        first = word[0]
        if first == "\n":
            line += 1
        elif first == ";":
            continue
        elif first == "(":
            stack.append((current, line))
            current = []
        elif first == ")":
            if not stack:
                raise VnnlibError(path, line, "unbalanced ')'")
            parent, start = stack.pop()
            parent.append(SList(tuple(current), start))
            current = parent
        else:
            current.append(Atom(word, line))
    if stack:
        raise VnnlibError(path, stack[-1][1], "unclosed '(' (the file ends inside this expression)")
    return top
