"""User-caused errors of the verifier: each prints as one line naming the file and the problem."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (bad file, unsupported operator, shape mismatch): exit code 2."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ModelError(UserError):
    """The ONNX file cannot be read, converted or bounded."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (the rest is detail for tracebacks)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
