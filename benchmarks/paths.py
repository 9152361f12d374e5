"""Where the shared competition data lives: `$VERIFIER_SHARED`, else `../shared` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    return Path(os.environ.get("VERIFIER_SHARED", REPO.parent / "shared"))


def suites_root() -> Path:
    """The folder holding the 2021 suites (one folder per benchmark with an instances CSV)."""
    return shared_root() / "benchmarks" / "vnncomp2021"


def groundtruth_root() -> Path:
    return shared_root() / "groundtruth"
