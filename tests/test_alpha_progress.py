"""alpha-CROWN gains over CROWN under any torch, and says so (at INFO, `verify -v`) when it cannot move.

torch 2.14 gave `Tensor.clamp` the subgradient 0 at its bounds; ReLU's lower slopes start at 0 or
1 and went through a clamp, so no parameter received a gradient and alpha-CROWN returned CROWN's
bounds without a word. These tests fake that behaviour, so they check the same under every torch.
"""

from __future__ import annotations

import logging

import torch

from verifier.benchmarks import alpha_gain
from verifier.bounds import activation
from verifier.bounds.core import Interval
from verifier.bounds.optimize import Adam
from verifier.bounds.relaxation import clamp_passing
from verifier.output_bounds import raw_output_bounds

LOGGER = "verifier.bounds.optimize"


def random_relu_network(seed: int = 0, widths: tuple[int, ...] = (6, 32, 32, 4)):
    return alpha_gain.random_relu_network(seed, widths)[1]


def random_box(network, seed: int = 0, radius: float = 0.5) -> Interval:
    center = torch.randn((2, *network.input_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Interval(center - radius, center + radius)


def _gaps(network, box) -> tuple[float, float]:
    with torch.no_grad():
        crown = raw_output_bounds(network, box, "crown")
        alpha = raw_output_bounds(network, box, "alpha-crown")
    return float((crown[1] - crown[0]).mean()), float((alpha[1] - alpha[0]).mean())


def _stalls(caplog) -> list[str]:
    """What the optimiser said about not moving (INFO, which `verify -v` shows)."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO
            and ("received a gradient" in r.getMessage() or "improved no bound" in r.getMessage())]


def test_clamp_passing_has_derivative_one_on_its_bounds():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    y = clamp_passing(x, 0, 1)
    y.sum().backward()
    assert y.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_alpha_crown_gains_over_crown_and_says_nothing_of_stalling(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    network = random_relu_network()
    crown, alpha = _gaps(network, random_box(network))
    assert alpha < 0.95 * crown
    assert _stalls(caplog) == []


def test_no_gradient_is_logged(caplog, monkeypatch):
    # torch 2.14's clamp, under any torch: derivative 0 on the bounds, where the slopes start
    monkeypatch.setattr(activation, "clamp_passing",
                        lambda x, low, high: torch.where((x > low) & (x < high), x, x.clamp(low, high).detach()))
    caplog.set_level(logging.INFO, logger=LOGGER)
    network = random_relu_network()
    crown, alpha = _gaps(network, random_box(network))
    assert alpha == crown
    assert any("received a gradient" in message for message in _stalls(caplog))


def test_iterations_that_improve_nothing_are_logged(caplog, monkeypatch):
    def frozen_step(self):  # gradients arrive, but the parameters never move
        for parameter in self.parameters:
            parameter.grad = None

    monkeypatch.setattr(Adam, "step", frozen_step)
    caplog.set_level(logging.INFO, logger=LOGGER)
    network = random_relu_network()
    crown, alpha = _gaps(network, random_box(network))
    assert alpha == crown
    assert any("improved no bound" in message for message in _stalls(caplog))
