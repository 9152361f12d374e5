"""Bound passes cut short by their deadline give sound bounds, or none (OutOfTime), never wrong ones."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests import soundness
from tests.test_soundness_random import network_for
from verifier.bounds.engine import OutOfTime, backward_bound, check_time, crown_bounds
from verifier.bounds.optimize import optimize_bounds
from verifier.prove import prove
from verifier.settings import AlphaSettings
from verifier.spec import Spec
from verifier.vnnlib import parse_text


def _clock(calls: int):
    """A time_left that allows `calls` checks, then reports the deadline passed."""
    counter = itertools.count()
    return lambda: 1.0 if next(counter) < calls else 0.0


def _rows(network, box):
    count = math.prod(network.output_shape)
    cases = box.lower.shape[0]
    eye = torch.eye(count, dtype=network.dtype)
    return torch.cat([eye, -eye]).expand(cases, -1, -1).reshape(cases, 2 * count, *network.output_shape)


@pytest.mark.parametrize("seed", range(2))
def test_a_pass_interrupted_anywhere_gives_sound_bounds_or_none(seed):
    network = network_for("dense", seed)
    generator = torch.Generator().manual_seed(seed)
    box = soundness.random_box(network, generator, radius=0.5)
    points = soundness.sample_points(network, box, generator)
    values = network.forward_all(points.reshape(-1, *network.input_shape))
    outputs = values[network.output].reshape(points.shape[0], points.shape[1], -1)
    coeffs = _rows(network, box)
    rows = torch.einsum("nbo,bmo->nbm", outputs, coeffs.reshape(*coeffs.shape[:2], -1))
    outcomes = {"crown": set(), "alpha": set()}
    for calls in [*range(30), 60, 120, 250, 500, 1000, 10**6]:  # a pass checks at every node of every sweep
        with torch.no_grad():
            try:
                bounds = crown_bounds(network, box, time_left=_clock(calls))
                lower = backward_bound(network, network.output, coeffs, bounds).lower
                outcomes["crown"].add("bound")
                assert bool((lower <= rows.amin(0) + 1e-9).all()), calls
            except OutOfTime:
                outcomes["crown"].add("none")
            try:
                result = optimize_bounds(network, box, coeffs, AlphaSettings(iterations=4, patience=4),
                                         time_left=_clock(calls))
                outcomes["alpha"].add("bound")
                assert bool((result.bound.lower <= rows.amin(0) + 1e-9).all()), calls
            except OutOfTime:
                outcomes["alpha"].add("none")
    assert outcomes == {"crown": {"bound", "none"}, "alpha": {"bound", "none"}}  # both cases were reached


def test_prove_reports_an_interrupted_pass_as_nothing_proved():
    network = network_for("dense", 0)
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -0.1))\n(assert (<= X_{i} 0.1))\n"
                   for i in range(math.prod(network.input_shape)))
    text += "(declare-const Y_0 Real)\n(assert (>= Y_0 1000000.0))\n"  # far from any output: provable
    spec = Spec.build(parse_text(text).padded_to_outputs(math.prod(network.output_shape)), network.input_shape,
                      network.dtype)
    assert prove(network, spec, "crown").all_proved
    cut = prove(network, spec, "crown", time_left=lambda: 0.0)
    assert cut.interrupted and not cut.proved.any()


def test_a_sweep_is_not_started_when_its_measured_cost_exceeds_the_time_left():
    check_time(lambda: 2.0, next_step=1.0)  # time for one more: goes on
    check_time(None, next_step=1e9)  # no deadline
    with pytest.raises(OutOfTime):
        check_time(lambda: 0.5, next_step=1.0)
    with pytest.raises(OutOfTime):
        check_time(lambda: 0.0)


def test_a_sweep_stops_between_the_nodes_it_passes():
    """One sweep from a deep node can cost far more than every sweep before it (TinyYOLO: 3 s
    after 0.1 s each), so a sweep checks the time at each node it passes."""
    network = network_for("dense", 0)
    box = soundness.random_box(network, torch.Generator().manual_seed(0), radius=0.5)
    with torch.no_grad():
        bounds = crown_bounds(network, box)
        rows = _rows(network, box)
        whole = backward_bound(network, network.output, rows, bounds, time_left=_clock(1000))
        assert torch.equal(whole.lower, backward_bound(network, network.output, rows, bounds).lower)
        with pytest.raises(OutOfTime):
            backward_bound(network, network.output, rows, bounds, time_left=_clock(2))
