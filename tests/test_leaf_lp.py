"""The LPs of branch and bound's leaves: optimal multipliers that reproduce the optimum through
the Lagrangian (the betas the sweep then uses), emptiness certificates, and linear forms exact on
the leaves of real searches."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests import exact
from verifier import leaf_lp, search
from verifier.prove import prove
from verifier.search import branch_and_bound
from verifier.settings import BranchSettings


def lagrangian_minimum(row, constant, constraints, bias, multipliers, lower, upper) -> float:
    """min over the box of row x + constant + multipliers (constraints x + bias)."""
    weight = row + constraints.T @ multipliers
    return float(constant + multipliers @ bias + np.minimum(weight * lower, weight * upper).sum())


@pytest.mark.parametrize("seed", range(5))
def test_multipliers_reproduce_the_optimum_and_the_minimiser_is_feasible(seed):
    rng = np.random.default_rng(seed)
    n, k = 4, 6
    row, constraints = rng.normal(size=(1, 1, n)), rng.normal(size=(1, k, n))
    bias = rng.normal(0, 0.3, size=(1, k)) - 0.5  # the centre of the box is feasible
    lower, upper = -np.ones((1, n)), np.ones((1, n))
    solution = leaf_lp.solve_leaves(row, np.array([[0.7]]), constraints, bias, np.ones((1, k), bool), lower, upper,
                                    np.ones((1, 1), bool))
    point, minimum = solution.points[0, 0], solution.minima[0, 0]
    assert np.all(constraints[0] @ point + bias[0] <= 1e-7) and np.all(np.abs(point) <= 1 + 1e-9)
    assert abs(row[0, 0] @ point + 0.7 - minimum) < 1e-7
    assert np.all(solution.multipliers >= 0)
    assert abs(lagrangian_minimum(row[0, 0], 0.7, constraints[0], bias[0], solution.multipliers[0, 0],
                                  lower[0], upper[0]) - minimum) < 1e-6


def test_an_empty_domain_gets_multipliers_whose_bound_exceeds_the_row_everywhere():
    # x0 + x1 >= 3 cannot hold in [-1, 1]^2
    constraints, bias = np.array([[[-1.0, -1.0], [1.0, 0.0]]]), np.array([[3.0, -5.0]])
    row, lower, upper = np.array([[[2.0, -1.0]]]), -np.ones((1, 2)), np.ones((1, 2))
    solution = leaf_lp.solve_leaves(row, np.zeros((1, 1)), constraints, bias, np.ones((1, 2), bool), lower, upper,
                                    np.ones((1, 1), bool))
    assert solution.minima[0, 0] == np.inf
    bound = lagrangian_minimum(row[0, 0], 0.0, constraints[0], bias[0], solution.multipliers[0, 0], lower[0], upper[0])
    assert bound > 3.0  # the row's largest value on the box


def leaf_calls(monkeypatch, seeds=range(10), mutate=None) -> list:
    """The leaf LPs of searches on small random networks (violated properties, so that the
    searches reach leaves), with their networks."""
    calls = []
    original = leaf_lp.solve_leaves

    def recorded(*arrays):
        if mutate is not None:
            arrays = mutate(*arrays)
        solution = original(*arrays)
        calls.append((network, arrays, solution))
        return solution

    monkeypatch.setattr(search, "solve_leaves", recorded)
    rng = np.random.default_rng(3)
    for _ in seeds:
        layers = exact.random_layers(rng, 2, 8, 2)
        network = exact.network_of(layers)
        minimum, _ = exact.exact_minimum(layers, -1.0, 1.0)
        spec = exact.spec_below(minimum + 1e-3, -1.0, 1.0, 2)
        crown = prove(network, spec, "crown")
        stop = time.monotonic() + 1.5
        branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(batch=16, iterations=5),
                         lambda stop=stop: stop - time.monotonic())
    return calls


def leaf_mismatch(calls) -> float:
    """The largest |network(x*) - LP optimum| over the leaves' minimisers: 0 where a leaf's
    linear forms and constraints are exact."""
    worst = 0.0
    for network, _, solution in calls:
        solved = np.isfinite(solution.minima)
        if solved.any():
            points = torch.from_numpy(solution.points[solved]).reshape(-1, 1, 2)
            values = network(points).flatten().detach().numpy()
            worst = max(worst, float(np.abs(values - solution.minima[solved]).max()))
    return worst


def test_on_real_leaves_the_lp_optimum_is_the_network_output_at_its_minimiser(monkeypatch):
    calls = leaf_calls(monkeypatch)
    assert sum(np.isfinite(c[2].minima).sum() for c in calls) >= 3
    assert leaf_mismatch(calls) < 1e-5


def test_the_exactness_check_catches_the_constraints_dropped(monkeypatch):
    def unconstrained(rows, constant, constraints, bias, active, lower, upper, wanted):
        return rows, constant, constraints, bias, np.zeros_like(active), lower, upper, wanted

    assert leaf_mismatch(leaf_calls(monkeypatch, mutate=unconstrained)) > 1e-3
