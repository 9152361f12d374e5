"""Branch and bound against exact minima (tests/exact.py): no proof of a property violated at
the exact minimiser, on random ReLU networks and every branching choice."""

from __future__ import annotations

import numpy as np
import torch

from tests import exact
from verifier import search


def test_the_exact_minimum_is_below_every_sampled_output_and_reached_at_its_point():
    rng = np.random.default_rng(7)
    for _ in range(4):
        layers = exact.random_layers(rng, 2, 8, 2)
        network = exact.network_of(layers)
        minimum, point = exact.exact_minimum(layers, -1.0, 1.0)
        axis = torch.linspace(-1, 1, 201, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)
        assert float(network(grid).min()) >= minimum - 1e-6
        assert abs(float(network(torch.from_numpy(point).reshape(1, 1, 2))) - minimum) < 1e-6


def test_branch_and_bound_never_proves_what_the_exact_minimum_violates():
    tally = exact.check_networks(18, seed=1, seconds=1.5)
    assert not tally.wrong, tally.wrong
    # both sides are exercised: proofs below the minimum, counterexamples above it
    assert tally.proved >= 6 and tally.found >= 6, tally


def test_the_exact_check_catches_split_sides_swapped(monkeypatch):
    original = search._split

    def swapped(parents, cut_points):
        lower, upper, signs, cuts = original(parents, cut_points)
        return lower, upper, {z: -s for z, s in signs.items()}, cuts

    monkeypatch.setattr(search, "_split", swapped)
    assert exact.check_networks(9, seed=1, seconds=1.0).wrong
