"""Counterexample confirmation on the original ONNX model, and the results file.

A candidate input becomes a `sat` only here: it is cast to the model's input dtype, must lie in a
case's box exactly (no slack), is run through onnxruntime on the original file, and the property
is evaluated in float64 on onnxruntime's outputs, with every row of a disjunct holding exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnxruntime

from verifier.load import read_onnx_bytes
from verifier.vnnlib import Property


@dataclass
class Counterexample:
    """A confirmed violation: flat inputs (as the model dtype holds them) and onnxruntime outputs."""

    inputs: np.ndarray
    outputs: np.ndarray
    case: int
    disjunct: int


def make_session(path: str) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(read_onnx_bytes(path), options, providers=["CPUExecutionProvider"])


class OnnxChecker:
    """Runs the original model in onnxruntime and tests candidate inputs against the property."""

    def __init__(self, path: str, input_name: str, input_shape: tuple[int, ...], np_dtype) -> None:
        self.session = make_session(path)
        self.input_name = input_name
        self.input_shape = input_shape
        self.np_dtype = np_dtype

    def outputs(self, flat_inputs: np.ndarray) -> np.ndarray:
        """Flat float64 outputs for flat inputs (already of the model dtype)."""
        feed = {self.input_name: flat_inputs.astype(self.np_dtype).reshape(self.input_shape)}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float64).reshape(-1)

    def confirm(self, prop: Property, candidate: np.ndarray) -> Counterexample | None:
        """The counterexample if `candidate` (flat) violates the property exactly, else None."""
        x = np.asarray(candidate).astype(self.np_dtype).reshape(-1)
        exact = x.astype(np.float64)
        if not np.all(np.isfinite(exact)):
            return None
        y = None
        for case_index, case in enumerate(prop.cases):
            if not (np.all(exact >= case.lower) and np.all(exact <= case.upper)):
                continue
            if y is None:
                y = self.outputs(x)
                if not np.all(np.isfinite(y)):
                    return None
            for k, disjunct in enumerate(case.disjuncts):
                if np.all(disjunct.matrix @ y[: disjunct.matrix.shape[1]] <= disjunct.offset):
                    return Counterexample(exact, y, case_index, k)
        return None


def format_assignment(example: Counterexample) -> str:
    """The competition's assignment text: every X_i, then every Y_j, one space inside each pair."""
    lines = [f"(X_{i} {float(v)!r})" for i, v in enumerate(example.inputs)]
    lines += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(example.outputs)]
    return "(" + "\n ".join(lines) + ")\n"


def write_results(path: str, verdict: str, example: Counterexample | None = None) -> None:
    """Write the results file atomically: the verdict line, then the assignment for a sat."""
    text = verdict + "\n"
    if verdict == "sat" and example is not None:
        text += format_assignment(example)
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
