"""Shared fixtures: where the competition data is, and cached models."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch

from benchmarks.paths import shared_root, suites_root

torch.set_num_threads(2)
warnings.filterwarnings("ignore", message=".*Using a non-tuple sequence.*")
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def shared_or_skip() -> Path:
    """The 2021 suites folder; tests that need it skip when it is absent (fresh clones)."""
    root = suites_root()
    if not root.exists():
        pytest.skip(f"shared benchmarks not found at {root} (set VERIFIER_SHARED to their parent folder)")
    return root


def opcoverage_or_skip() -> Path:
    root = shared_root() / "benchmarks" / "opcoverage"
    if not root.exists():
        pytest.skip(f"opcoverage benchmarks not found at {root}")
    return root


def skipped_if_empty(params: list, why: str) -> list:
    """Parametrize values, or one skipped entry that says why there are none (pytest's own
    message for an empty set names no folder)."""
    return params or [pytest.param(None, None, marks=pytest.mark.skip(reason=why))]


MISSING_SHARED = f"shared benchmarks not found under {shared_root()} (set VERIFIER_SHARED to their parent folder)"


@functools.lru_cache(maxsize=8)
def cached_model(path: str):
    from verifier.load import load_model

    return load_model(path)
