"""`verify check`: an independent re-check of a counterexample file, as the competition does it.

It shares nothing with the falsifier but the VNN-LIB parser: it reads the assignment text, runs
the original model in onnxruntime, and applies the 2023 rules: outputs must match the file's Y
values within relative 1e-3 (absolute when their size is below 1e-6), X must lie in some input box
within 1e-4, and, on the file's Y values, every row of some disjunct must hold within 1e-4.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime

from verifier.errors import UserError
from verifier.vnnlib import Property

OUTPUT_TOLERANCE = 1e-3
SPEC_TOLERANCE = 1e-4
_PAIR = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")
_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


@dataclass
class CheckResult:
    valid: bool
    reason: str


def read_assignment(path: str) -> tuple[np.ndarray, np.ndarray]:
    """X and Y values of a counterexample file (optionally starting with a 'sat' line)."""
    try:
        with open(path) as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(path, f"cannot read the counterexample ({error})") from None
    lines = text.strip().splitlines()
    if lines and lines[0].strip().lower() == "sat":
        lines = lines[1:]
    body = " ".join(lines).strip()
    if not (body.startswith("(") and body.endswith(")")):
        raise UserError(path, "the assignment must start with '(' and end with ')'")
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for kind, index, number in _PAIR.findall(body[1:-1]):
        try:
            values[kind][int(index)] = float(number)
        except ValueError:
            raise UserError(path, f"{kind}_{index} has the non-numeric value '{number}'") from None
    arrays = []
    for kind in ("X", "Y"):
        found = values[kind]
        if sorted(found) != list(range(len(found))) or not found:
            raise UserError(path, f"the {kind} values must be {kind}_0, {kind}_1, ... with none missing")
        arrays.append(np.array([found[i] for i in range(len(found))]))
    return arrays[0], arrays[1]


def _run_model(model_path: str, inputs: np.ndarray) -> np.ndarray:
    with open(model_path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    model = onnx.load_from_string(raw)
    initializers = {i.name for i in model.graph.initializer}
    (graph_input,) = [i for i in model.graph.input if i.name not in initializers]
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
             for d in graph_input.type.tensor_type.shape.dim]
    dtype = _DTYPES[graph_input.type.tensor_type.elem_type]
    if inputs.size != int(np.prod(shape)):
        raise ValueError(f"{inputs.size} X values for a model input of {int(np.prod(shape))}")
    session = onnxruntime.InferenceSession(raw, providers=["CPUExecutionProvider"])
    result = session.run(None, {graph_input.name: inputs.astype(dtype).reshape(shape, order="C")})
    return np.asarray(result[0], dtype=np.float64).reshape(-1)


def check_counterexample(model_path: str, prop: Property, ce_path: str) -> CheckResult:
    """Judge a counterexample file; user errors (unreadable files) raise UserError."""
    x, y_file = read_assignment(ce_path)
    try:
        y_model = _run_model(model_path, x)
    except ValueError as error:
        return CheckResult(False, str(error))
    if y_model.size != y_file.size:
        return CheckResult(False, f"{y_file.size} Y values for a model output of {y_model.size}")
    size = np.abs(y_file).max()
    difference = np.abs(y_model - y_file).max()
    relative = difference / size if size >= 1e-6 else difference
    if not relative <= OUTPUT_TOLERANCE:
        return CheckResult(False, f"outputs differ from onnxruntime by {relative:.3g} (relative)")
    for case in prop.cases:
        if x.size != case.lower.size:
            return CheckResult(False, f"{x.size} X values for a property over {case.lower.size} inputs")
        if np.all(x >= case.lower - SPEC_TOLERANCE) and np.all(x <= case.upper + SPEC_TOLERANCE):
            for disjunct in case.disjuncts:
                if np.all(disjunct.matrix @ y_file[: disjunct.matrix.shape[1]] <= disjunct.offset + SPEC_TOLERANCE):
                    return CheckResult(True, "the counterexample violates the property")
    return CheckResult(False, "no input box contains X with a disjunct that holds on Y")
