"""The choice of intermediate bounds (backward sweeps, forward mode, or both) and what each gives."""

from __future__ import annotations

import logging

import pytest
import torch

from tests import soundness
from tests.test_search import relu_network, smallest_output, spec_below
from tests.test_soundness_random import network_for
from verifier.bounds import intermediate
from verifier.bounds.core import Interval
from verifier.bounds.engine import OutOfTime, crown_bounds
from verifier.bounds.forward import forward_bounds
from verifier.bounds.intermediate import FORWARD_INPUTS, SWEEPS_WORTH, intermediate_bounds, resolve
from verifier.prove import prove
from verifier.search import _BoxSearch
from verifier.settings import BranchSettings


def _box(count: int) -> Interval:
    return Interval(torch.zeros(1, count), torch.ones(1, count))


def test_auto_is_both_with_few_inputs_and_backward_with_many():
    assert resolve("auto", _box(FORWARD_INPUTS)) == "both"
    assert resolve("auto", _box(FORWARD_INPUTS + 1)) == "backward"
    for mode in ("backward", "forward", "both"):
        assert resolve(mode, _box(3)) == mode


def test_an_unknown_mode_is_refused():
    network = network_for("dense", 0)
    with pytest.raises(ValueError, match="expected backward, forward or both"):
        intermediate_bounds(network, soundness.random_box(network, torch.Generator().manual_seed(0)), "sideways")


@pytest.mark.parametrize("family", ["dense", "conv", "residual"])
def test_both_is_within_forward_and_narrower_than_either_overall(family):
    """`both` starts from the forward intervals and tightens them; neurons that forward mode makes
    stable are not swept, so a backward sweep may still be tighter on some of those."""
    network = network_for(family, 1)
    box = soundness.random_box(network, torch.Generator().manual_seed(1))
    with torch.no_grad():
        backward = crown_bounds(network, box)
        forward = forward_bounds(network, box).intervals
        both = intermediate_bounds(network, box, "both")
    for index in range(1, len(network.nodes)):
        label = network.nodes[index].label
        assert bool((both[index].lower >= forward[index].lower).all()), label
        assert bool((both[index].upper <= forward[index].upper).all()), label

    def width(bounds):  # over the neurons all three bound (Log and Div give some infinite bounds)
        total = 0.0
        for i in range(1, len(network.nodes)):
            finite = torch.ones_like(both[i].lower, dtype=torch.bool)
            for each in (both, forward, backward):
                finite &= torch.isfinite(each[i].upper - each[i].lower)
            total += float((bounds[i].upper - bounds[i].lower)[finite].sum())
        return total

    assert width(both) < min(width(forward), width(backward))


def test_both_refines_fewer_neurons_than_backward(monkeypatch):
    network = network_for("dense", 2)
    box = soundness.random_box(network, torch.Generator().manual_seed(2), radius=0.1)
    rows = {"count": 0}
    original = intermediate.crown_bounds.__globals__["backward_bound"]

    def counting(net, start, coeffs, *args, **kwargs):
        rows["count"] += coeffs.shape[1]
        return original(net, start, coeffs, *args, **kwargs)

    monkeypatch.setitem(intermediate.crown_bounds.__globals__, "backward_bound", counting)
    with torch.no_grad():
        crown_bounds(network, box)
        backward_rows, rows["count"] = rows["count"], 0
        intermediate_bounds(network, box, "both")
    assert 0 < rows["count"] < backward_rows


def test_both_cut_short_leaves_the_forward_intervals():
    network = network_for("dense", 3)
    box = soundness.random_box(network, torch.Generator().manual_seed(3))
    with torch.no_grad():
        forward = intermediate_bounds(network, box, "forward")
        calls = iter([1.0] * len(network.nodes) + [0.0] * 1000)  # the forward pass, then no time left
        both = intermediate_bounds(network, box, "both", time_left=lambda: next(calls))
    for mine, theirs in zip(both, forward):
        assert torch.equal(mine.lower, theirs.lower) and torch.equal(mine.upper, theirs.upper)
    with pytest.raises(OutOfTime), torch.no_grad():
        intermediate_bounds(network, box, "forward", time_left=lambda: 0.0)


def test_both_sweeps_stop_after_their_share_of_the_forward_pass():
    """With no share (0 forward passes) the sweeps are cut at once and the forward intervals stay;
    with a share far larger than they take, `both` is as without one."""
    network = network_for("dense", 3)
    box = soundness.random_box(network, torch.Generator().manual_seed(3))
    with torch.no_grad():
        forward = intermediate_bounds(network, box, "forward")
        both = intermediate_bounds(network, box, "both")
        none = intermediate_bounds(network, box, "both", sweeps_within=0.0)
        ample = intermediate_bounds(network, box, "both", sweeps_within=1e9)

    def same(these, those):
        return all(torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper) for a, b in zip(these, those))
    assert not same(both, forward)
    assert same(none, forward) and same(ample, both)


def test_a_broken_forward_pass_is_caught_through_both(monkeypatch):
    """The soundness check of `both` fails when the forward intervals it starts from are wrong."""
    network = network_for("dense", 0)

    def shrunk(*args, **kwargs):
        passed = forward_bounds(*args, **kwargs)
        passed.intervals = [passed.intervals[0]] + [Interval(b.center - 0.5 * b.radius, b.center + 0.5 * b.radius)
                                                    for b in passed.intervals[1:]]
        return passed

    assert soundness.check(network, "both", seed=0) == []
    monkeypatch.setattr(intermediate, "forward_bounds", shrunk)
    assert soundness.check(network, "both", seed=0) != []


class _Search(_BoxSearch):
    def __init__(self) -> None:  # only what _choose_intermediate reads
        self.intermediate, self.measure_sweeps = "both", True


@pytest.mark.parametrize("backward, expected", [(1.0, "both"), (10.0, "forward")])
def test_input_splitting_keeps_the_sweeps_only_where_they_are_cheap(backward, expected, caplog):
    caplog.set_level(logging.INFO, logger="verifier.search")
    search = _Search()
    search._choose_intermediate({"forward": 1.0, "backward": backward})
    assert (search.intermediate, search.measure_sweeps) == (expected, False)
    assert any("forward-mode" in r.getMessage() for r in caplog.records) == (expected == "forward")


@pytest.mark.parametrize("ratio, expected", [(None, "both"), (1.0, "both"), (SWEEPS_WORTH * 2, "forward")])
def test_input_splitting_takes_the_bound_pass_measure_of_the_sweeps(ratio, expected):
    """The bound pass before the search reports how its sweeps compared with its forward pass; the
    sub-boxes then need no measuring of their own (only where no ratio is known)."""
    network = relu_network(0, width=12)
    spec = spec_below(smallest_output(network, -0.5, 0.5, 2) + 1e-3, -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    assert crown.sweep_ratio is not None and crown.sweep_ratio > 0  # two inputs: `auto` is `both`
    found = _BoxSearch(network, spec, 0, crown.intervals, BranchSettings(), sweep_ratio=ratio)
    assert (found.intermediate, found.measure_sweeps) == (expected, ratio is None)


def test_the_sweep_ratio_is_reported_only_for_forward_then_backward_passes():
    network = relu_network(0, width=12)
    spec = spec_below(0.0, -0.5, 0.5, 2)
    assert prove(network, spec, "crown", intermediate="backward").sweep_ratio is None
    assert prove(network, spec, "ibp").sweep_ratio is None

