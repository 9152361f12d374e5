"""Tokenizer and s-expression reader for VNN-LIB (an SMT-LIB 2 subset).

The reader keeps the line of every token so that later stages can name the line of a problem.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from verifier.vnnlib.errors import VnnlibError


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


def read_sexprs(text: str, path: str, token: re.Pattern | None = None, first_line: int = 1) -> list[SExpr]:
    """Read every top-level s-expression of `text`; comments run from `;` to the end of a line.

    `token` splits a line into parentheses and atoms (VNN-LIB 2.0's adds strings and bracketed
    lists); by default, 1.0's: whitespace and parentheses separate atoms. `first_line` is the
    line number of the text's first line."""
    stack: list[tuple[list[SExpr], int]] = []
    current: list[SExpr] = []
    top = current
    for line, code in enumerate(text.split("\n"), start=first_line):
        if ";" in code:
            code = code[:code.index(";")] if token is None or '"' not in code else _without_comment(code)
        words = code.replace("(", " ( ").replace(")", " ) ").split() if token is None else token.findall(code)
        for word in words:
            if word == "(":
                stack.append((current, line))
                current = []
            elif word == ")":
                if not stack:
                    raise VnnlibError(path, line, "unbalanced ')'")
                parent, start = stack.pop()
                parent.append(SList(tuple(current), start))
                current = parent
            elif not word.isspace():
                current.append(Atom(word, line))
    if stack:
        raise VnnlibError(path, stack[-1][1], "unclosed '(' (the file ends inside this expression)")
    return top


def _without_comment(code: str) -> str:
    """The line before its comment, where a `;` may also stand inside a quoted string."""
    inside = False
    for i, char in enumerate(code):
        if char == '"':
            inside = not inside
        elif char == ";" and not inside:
            return code[:i]
    return code
