"""VNN-LIB parser: `parse_file(path)` gives a `Property` in normal form (boxes with `C y <= d`)."""

from __future__ import annotations

import gc
from pathlib import Path

from verifier.vnnlib.errors import VnnlibError
from verifier.vnnlib.formula import read_script, read_script_text
from verifier.vnnlib.normal import Case, Disjunct, Property, compile_script
from verifier.vnnlib.query import Query, is_version_2, parse_query
from verifier.vnnlib.syntax import read_sexprs

__all__ = ["Case", "Disjunct", "Property", "Query", "VnnlibError", "parse_file", "parse_text", "read_query"]


def parse_text(text: str, path: str = "<text>") -> Property:
    """Parse VNN-LIB 1.0 source; `path` only names the source in error messages."""
    if is_version_2(text):
        raise VnnlibError(path, 1, "this is a VNN-LIB 2.0 query: decide it with "
                          "`verify verify QUERY --network NAME=MODEL.onnx`")
    # a large file makes hundreds of thousands of small objects, none of them cyclic: the cycle
    # collector's passes over them cost a third of the time (cardinality_0_100_128: 0.9 -> 0.6 s)
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            script = read_script_text(text, path)
        except VnnlibError:
            # the general reader reads the whole file before any command: its error comes first
            read_script(read_sexprs(text, path), path)
            raise
        return compile_script(script, path)
    finally:
        if collecting:
            gc.enable()


def parse_file(path: str | Path) -> Property:
    """Parse a VNN-LIB 1.0 file; raises VnnlibError (one line: file, line, problem) on bad input."""
    return parse_text(_read_text(str(path)), str(path))


def read_query(path: str | Path) -> Query:
    """Read a VNN-LIB 2.0 query file; raises VnnlibError (one line) on bad input."""
    path = str(path)
    text = _read_text(path)
    if not is_version_2(text):
        raise VnnlibError(path, 1, "not a VNN-LIB 2.0 query (it must start with (vnnlib-version <2.0>)); "
                          "a VNN-LIB 1.0 property is decided with `verify MODEL PROPERTY`")
    return parse_query(text, path)


def _read_text(path: str) -> str:
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
    return text
