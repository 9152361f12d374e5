"""Every VNN-LIB 1.0 file of the shared suites parses to the normal form it had before 2.0 support.

tests/data/vnnlib_normal_forms.json holds a digest of each file's normal form as the parser of
db984bf (the last commit before VNN-LIB 2.0) gave it: the sizes, and every case's box and
disjuncts as float64 bytes. Parse time is a figure of benchmarks/vnnlib_parse.py, not a test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from verifier.benchmarks.paths import shared_root

DIGESTS = Path(__file__).parent / "data" / "vnnlib_normal_forms.json"


def digest(prop) -> str:
    """sha256 (first 16 hex digits) of a Property's normal form."""
    h = hashlib.sha256(f"{prop.num_inputs} {prop.num_outputs} {len(prop.cases)}".encode())
    for case in prop.cases:
        h.update(np.ascontiguousarray(case.lower, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(case.upper, dtype=np.float64).tobytes())
        for disjunct in case.disjuncts:
            h.update(np.ascontiguousarray(disjunct.matrix, dtype=np.float64).tobytes())
            h.update(np.ascontiguousarray(disjunct.offset, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _root() -> Path:
    root = shared_root() / "benchmarks"
    if not root.exists():
        pytest.skip(f"the shared benchmarks are absent ({root})")
    return root


def test_every_1_0_file_keeps_its_normal_form():
    from verifier.vnnlib import parse_file

    root = _root()
    expected = json.loads(DIGESTS.read_text())
    changed = []
    for relative, wanted in sorted(expected.items()):
        path = root / relative
        if path.exists() and digest(parse_file(path)) != wanted:
            changed.append(relative)
    assert changed == []
