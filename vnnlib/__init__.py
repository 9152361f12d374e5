"""VNN-LIB parser: `parse_file(path)` gives a `Property` in normal form (boxes with `C y <= d`)."""

from __future__ import annotations

from pathlib import Path

from verifier.vnnlib.errors import VnnlibError
from verifier.vnnlib.formula import read_script
from verifier.vnnlib.normal import Case, Disjunct, Property, compile_script
from verifier.vnnlib.syntax import read_sexprs

__all__ = ["Case", "Disjunct", "Property", "VnnlibError", "parse_file", "parse_text"]


def parse_text(text: str, path: str = "<text>") -> Property:
    """Parse VNN-LIB source; `path` only names the source in error messages."""
    return compile_script(read_script(read_sexprs(text, path), path), path)


def parse_file(path: str | Path) -> Property:
    """Parse a VNN-LIB file; raises VnnlibError (one line: file, line, problem) on bad input."""
    path = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise VnnlibError(path, None, f"cannot read the file ({error.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise VnnlibError(path, line, "the file is not UTF-8 text") from None
    return parse_text(text, path)
