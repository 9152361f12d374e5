"""Window (patches) coefficients give exactly the dense backward sweep."""

from __future__ import annotations

import pytest
import torch

from tests.test_soundness_random import network_for
from verifier.bounds.engine import backward_bound, crown_bounds
from verifier.bounds.patches import identity_patches


@pytest.mark.parametrize("family,seed", [("residual", s) for s in range(4)] + [("conv", s) for s in range(2)])
def test_window_sweeps_equal_dense_sweeps(family, seed):
    network = network_for(family, seed)
    for rule in network.rules:  # the linear algebra only: window sweeps bound rounding more crudely
        rule.exec_dtype = None
    generator = torch.Generator().manual_seed(seed)
    center = torch.randn((2, *network.input_shape), generator=generator, dtype=torch.float64)
    from verifier.bounds.core import Interval

    box = Interval(center - 0.3, center + 0.3)
    with torch.no_grad():
        bounds = crown_bounds(network, box)
        checked = 0
        for index, node in enumerate(network.nodes):
            if index == 0 or len(node.shape) != 4 or not network.rule(index).accepts_patches:
                continue
            numel = bounds[index].lower[0].numel()
            positions = torch.arange(0, numel, 3)
            rows = positions.numel()
            dense = torch.zeros(2, 2 * rows, numel, dtype=torch.float64)
            dense[:, torch.arange(rows), positions] = 1.0
            dense[:, rows + torch.arange(rows), positions] = -1.0
            expected = backward_bound(network, index, dense.reshape(2, 2 * rows, *node.shape), bounds)
            signs = torch.cat([torch.ones(rows), -torch.ones(rows)])
            windows = identity_patches(torch.cat([positions, positions]), signs, 2, node.shape, torch.float64)
            got = backward_bound(network, index, windows, bounds)
            torch.testing.assert_close(got.lower, expected.lower, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(got.magnitude, expected.magnitude, rtol=1e-9, atol=1e-9)
            checked += 1
    assert checked >= 2


def test_window_padding_is_never_negative():
    # sweeps start unpadded and convolutions only add padding; a negative one is a bug where made
    from verifier.bounds.patches import Patches

    rows = identity_patches(torch.tensor([0, 5]), torch.ones(2), 1, (1, 2, 3, 3), torch.float64)
    assert rows.padding == (0, 0)
    with pytest.raises(ValueError, match="negative"):
        rows.with_values(rows.values, padding=(1, -1))
    with pytest.raises(ValueError, match="negative"):
        Patches(rows.values, (1, 1), (-1, 0), rows.position, rows.shape)
