"""The one error type of the parser: a problem at a line of a file."""

from __future__ import annotations


class VnnlibError(Exception):
    """A user error in a VNN-LIB file; `str()` is one line naming the file, the line and the problem."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
