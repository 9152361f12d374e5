"""Shared fixtures: where the competition data is, and cached models."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch

from verifier.benchmarks.paths import shared_root, suites_root

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


def model_pairs(root_fn) -> list:
    """(model, its first property) of every model under the folder `root_fn()` gives; none if absent."""
    from tests.test_load import _first_properties

    try:
        return sorted(_first_properties(root_fn()).items())
    except pytest.skip.Exception:
        return []


def too_wide(model) -> bool:
    """The carvana UNets: CROWN over their ReLU layers of 93k-186k neurons took over 25 CPU
    minutes in the shared-model tests here (alpha-CROWN over 20 GB in float64); the rule table
    checks their operators (ArgMax, OneHot, Equal, ReduceSum) on small models instead."""
    return "unet" in model.name


def bounded_opcoverage_pairs() -> list:
    """`model_pairs` of opcoverage without the models that `too_wide` names."""
    return [pair for pair in model_pairs(opcoverage_or_skip) if not too_wide(pair[0])]


def float64_first_box(model_path, prop_path, shrink: float = 1.0):
    """(network in float64, spec, the first input box shrunk about its centre); skips a model the
    engine does not support."""
    from verifier.bounds.core import Interval
    from verifier.errors import ModelError
    from verifier.graph import build_network
    from verifier.spec import Spec
    from verifier.vnnlib import parse_file

    try:  # the loader refuses operators that no rule covers, the graph builder uses they cannot bound
        model = cached_model(str(model_path))
        prop = parse_file(prop_path).padded_to_outputs(model.num_outputs)
        case = prop.cases[0]
        network = build_network(model, torch.from_numpy((case.lower + case.upper) / 2)).double()
    except ModelError as error:
        pytest.skip(f"not supported: {error}")
    spec = Spec.build(prop, network.input_shape, torch.float64)
    center, radius = spec.box.center[:1], spec.box.radius[:1] * shrink
    return network, spec, Interval(center - radius, center + radius)
