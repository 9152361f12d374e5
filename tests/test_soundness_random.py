"""Sampled soundness of every rule family on random graphs, and proof that the check can fail."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests import soundness
from tests.graphs import FAMILIES
from verifier.graph import build_network
from verifier.load import load_model


def network_for(family: str, seed: int, dtype=torch.float64):
    model = FAMILIES[family](np.random.default_rng(seed))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{family}_{seed}.onnx"
        onnx.save(model, path)
        network = build_network(load_model(str(path)))
    return network.to(dtype)


@pytest.mark.parametrize("method", ["ibp", "crown", "forward", "both"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", range(4))
def test_bounds_contain_sampled_values(family, seed, method):
    network = network_for(family, seed)
    assert soundness.check(network, method, seed=seed) == []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_bounds_contain_sampled_values(family):
    network = network_for(family, 11, torch.float32)
    assert soundness.check(network, "crown", seed=11) == []


def test_wide_ranges_keep_each_end_sized_by_itself():
    """exp on [-20, 20] and a sum of 1 and that exponential (a softmax's pairwise terms): the
    rounding allowance of each end is sized by that end, so the lower ends stay near 2e-9 and 1
    where one allowance from the upper end's 5e8 took them to -462 and -18."""
    from verifier.bounds.core import Interval
    from verifier.bounds.linear import Reduce
    from verifier.bounds.smooth import Exp

    exponent = Exp().ibp(Interval(torch.tensor([[-20.0, 0.0]]), torch.tensor([[20.0, 0.0]])))
    total = Reduce((0,), False, 1.0, (2,)).ibp(exponent)
    assert -1e-5 < float(exponent.lower[0, 0]) <= math.exp(-20) and float(exponent.upper[0, 0]) >= math.exp(20)
    assert 0.99 < float(total.lower[0]) <= 1 + math.exp(-20) and float(total.upper[0]) >= 1 + math.exp(20)
    values = torch.exp(torch.linspace(-20, 20, 4001, dtype=torch.float64)) + 1
    assert bool((values >= float(total.lower[0])).all() and (values <= float(total.upper[0])).all())
