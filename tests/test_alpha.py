"""alpha-CROWN: sound at random parameter values and at the optimum, never looser than CROWN."""

from __future__ import annotations

import math

import pytest
import torch

from tests import soundness
from tests.conftest import (
    MISSING_SHARED,
    bounded_opcoverage_pairs,
    float64_first_box,
    model_pairs,
    shared_or_skip,
    skipped_if_empty,
)
from tests.test_search import relu_network
from tests.test_soundness_random import network_for
from verifier.bounds import activation, bilinear, optimize
from verifier.bounds.core import Backward, Interval
from verifier.bounds.engine import backward_bound, crown_bounds
from verifier.bounds.optimize import Adam, optimize_bounds
from verifier.bounds.relaxation import AlphaStore, extremum_intercepts
from verifier.output_bounds import raw_output_bounds
from verifier.settings import AlphaSettings


def _randomize(alphas: AlphaStore, generator: torch.Generator) -> None:
    """Every parameter to a random value, then projected into its valid range."""
    with torch.no_grad():
        for params in alphas.params.values():
            for param in params:
                noise = torch.rand(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
                param.copy_(param * 2 * noise + (noise - 0.5))
    alphas.project()


def random_alpha_bounds(network, box: Interval, generator: torch.Generator, rows: int = 8, nodes: int | None = None):
    """Node intervals from alpha sweeps at random parameters; each node (or `nodes` random ones) is
    also bounded by its own sweep (random rows) so that the backward rules with parameters are what
    gets checked."""
    alphas = AlphaStore()
    with torch.no_grad():
        crown_bounds(network, box, alphas)  # creates the parameters
        _randomize(alphas, generator)
        bounds = crown_bounds(network, box, alphas)
        checked, slacks = list(bounds), [torch.zeros(()) for _ in bounds]
        order = torch.randperm(len(bounds) - 1, generator=generator) + 1
        for index in order[:nodes].tolist() if nodes else range(1, len(bounds)):
            numel = bounds[index].lower[0].numel()
            batch = box.lower.shape[0]
            count = min(numel, rows)
            positions = torch.randperm(numel, generator=generator)[:count]
            coeffs = torch.zeros(batch, 2 * count, numel, dtype=network.dtype)
            coeffs[:, torch.arange(count), positions] = 1.0
            coeffs[:, count + torch.arange(count), positions] = -1.0
            coeffs = coeffs.reshape(batch, 2 * count, *network.nodes[index].shape)
            backward_bound(network, index, coeffs, bounds, alphas, ("check", index))  # creates
            _randomize(alphas, generator)
            linear = backward_bound(network, index, coeffs, bounds, alphas, ("check", index))
            lower = bounds[index].lower.reshape(batch, -1).clone()
            upper = bounds[index].upper.reshape(batch, -1).clone()
            lower[:, positions] = linear.lower[:, :count]
            upper[:, positions] = -linear.lower[:, count:]
            slack = torch.zeros_like(lower)
            slack[:, positions] = soundness.ROUNDING[network.dtype] * linear.magnitude.reshape(batch, 2, count).amax(1)
            shape = bounds[index].lower.shape
            checked[index] = Interval(lower.reshape(shape), upper.reshape(shape))
            slacks[index] = slack.reshape(shape)
    return checked, slacks


@pytest.mark.parametrize("family", ["dense", "conv", "shape", "products", "residual"])
@pytest.mark.parametrize("seed", range(3))
def test_bounds_at_random_parameters_contain_sampled_values(family, seed):
    network = network_for(family, seed)
    generator = torch.Generator().manual_seed(seed)
    box = soundness.random_box(network, generator)
    bounds, slacks = random_alpha_bounds(network, box, generator)
    points = soundness.sample_points(network, box, generator)
    assert soundness.violations(network, bounds, slacks, points, 1e-9) == []


def _violations_at_random_parameters(family: str, seeds) -> list:
    """Sampled values outside the bounds at random parameters, on the family's networks of the
    given seeds (up to the first seed with any)."""
    for seed in seeds:
        network = network_for(family, seed)
        generator = torch.Generator().manual_seed(seed)
        box = soundness.random_box(network, generator)
        bounds, slacks = random_alpha_bounds(network, box, generator)
        found = soundness.violations(network, bounds, slacks, soundness.sample_points(network, box, generator), 1e-9)
        if found:
            return found
    return []


def test_random_parameters_catch_intercepts_that_ignore_the_critical_points(monkeypatch):
    # sigmoid/tanh lines are sound for any slope because the intercepts come from the extremum
    # over [l, u]; checking only the ends is wrong at most slopes, which random values must reveal
    monkeypatch.setattr(activation.SShaped, "intercepts",
                        lambda self, slope, lower, upper: extremum_intercepts(self.f, slope, lower, upper, []))
    assert _violations_at_random_parameters("dense", range(3))


def test_products_of_two_variables_take_plane_weights():
    """The random-parameter check above reaches the product rules' weights (Mul, Div and MatMul
    of two variables in the products family)."""
    network = network_for("products", 0)
    box = soundness.random_box(network, torch.Generator().manual_seed(0))
    alphas = AlphaStore()
    with torch.no_grad():
        crown_bounds(network, box, alphas)
    weighted = {type(network.rule(key[1])) for key in alphas.params}
    assert {bilinear.Multiply, bilinear.MatMulVariables} <= weighted


def _unprojected_mixes(alpha, coeffs):
    def start():
        half = torch.full_like(coeffs, 0.5)
        return [half, half.clone()]

    return tuple(alpha.values(start, lambda p: p))  # weights outside [0, 1]: extrapolated planes


def _alpha_offsets_negated(rule):
    original = rule.backward

    def broken(self, coeffs, x, y, alpha=None):
        step = original(self, coeffs, x, y, alpha)
        return step if alpha is None else Backward(step.inputs, -step.bias)
    return broken


@pytest.mark.parametrize("mutation", ["projection dropped", "Multiply offsets", "MatMulVariables offsets"])
def test_random_plane_weights_catch_broken_product_relaxations(monkeypatch, mutation):
    if mutation == "projection dropped":
        monkeypatch.setattr(bilinear, "_mixes", _unprojected_mixes)
    else:
        rule = getattr(bilinear, mutation.split()[0])
        monkeypatch.setattr(rule, "backward", _alpha_offsets_negated(rule))
    assert _violations_at_random_parameters("products", range(6)), f"{mutation} went unnoticed"


@pytest.mark.parametrize("family", ["dense", "conv", "shape", "products", "residual"])
def test_optimized_output_bounds_are_sound_and_never_looser_than_crown(family):
    network = network_for(family, 5)
    generator = torch.Generator().manual_seed(5)
    box = soundness.random_box(network, generator)
    with torch.no_grad():
        crown = raw_output_bounds(network, box, "crown")
        alpha = raw_output_bounds(network, box, "alpha-crown")
    assert torch.all(alpha[0] >= crown[0] - 1e-9) and torch.all(alpha[1] <= crown[1] + 1e-9)
    points = soundness.sample_points(network, box, generator)
    with torch.no_grad():
        outputs = network(points.reshape(-1, *network.input_shape)).reshape(points.shape[0], box.lower.shape[0], -1)
    assert torch.all(outputs >= alpha[0] - 1e-9) and torch.all(outputs <= alpha[1] + 1e-9)


def test_optimization_improves_a_relu_network():
    network = network_for("dense", 1)
    generator = torch.Generator().manual_seed(1)
    box = soundness.random_box(network, generator, radius=1.0)
    with torch.no_grad():
        crown = raw_output_bounds(network, box, "crown")
        alpha = raw_output_bounds(network, box, "alpha-crown")
    assert float((alpha[1] - alpha[0]).mean()) < float((crown[1] - crown[0]).mean())


def test_optimization_stops_before_a_time_limit_it_cannot_meet():
    network = network_for("dense", 1)
    box = soundness.random_box(network, torch.Generator().manual_seed(1), radius=1.0)
    count = math.prod(network.output_shape)
    cases = box.lower.shape[0]
    coeffs = torch.eye(count, dtype=network.dtype).expand(cases, -1, -1).reshape(cases, count, *network.output_shape)
    settings = AlphaSettings(iterations=50, patience=50)
    with torch.no_grad():
        unlimited = optimize_bounds(network, box, coeffs, settings, time_left=lambda: 3600.0)
        limited = optimize_bounds(network, box, coeffs, settings, time_left=lambda: 1e-9)
    assert unlimited.iterations > 1
    assert limited.iterations == 1  # the first iteration gives a bound; the next would overrun


def _distinct(pairs):
    """One model per architecture family where a suite repeats it (45 ACAS Xu networks)."""
    seen, keep = set(), []
    for model, prop in pairs:
        family = model.name.split("_")[0] if "ACASXU" in model.name else model.name
        if family not in seen:
            seen.add(family)
            keep.append((model, prop))
    return keep


@pytest.mark.parametrize("model_path,prop_path", skipped_if_empty(
    _distinct(model_pairs(shared_or_skip)) + [p for p in bounded_opcoverage_pairs() if "cGAN" not in p[0].name],
    MISSING_SHARED),
                         ids=lambda value: getattr(value, "name", str(value)))
def test_models_at_random_and_optimized_parameters(model_path, prop_path):
    # a tenth of the box and four checked nodes keep the large models (vit, ml4acopf, resnets,
    # the 42M-parameter nn4sys indexes) to seconds in float64; the small ones are checked everywhere
    network, spec, box = float64_first_box(model_path, prop_path)
    parameters = sum(p.numel() for p in network.parameters()) + sum(b.numel() for b in network.buffers())
    large = parameters > 2_000_000 or len(network.nodes) > 20
    if large:
        box = Interval(box.center - 0.1 * box.radius, box.center + 0.1 * box.radius)
    generator = torch.Generator().manual_seed(0)
    bounds, slacks = random_alpha_bounds(network, box, generator, rows=2 if large else 4, nodes=4 if large else None)
    inset = 1e-6 * (box.upper - box.lower)
    points = soundness.sample_points(network, Interval(box.lower + inset, box.upper - inset), generator,
                                     uniform=16, corners=8, pushed_nodes=2, steps=6)
    assert soundness.violations(network, bounds, slacks, points, 1e-9) == []
    coeffs = spec.matrix[:1].reshape(1, spec.matrix.shape[1], *network.output_shape)
    with torch.no_grad():
        iterations = 1 if parameters > 20_000_000 else 2 if large else 4
        optimized = optimize_bounds(network, box, coeffs, AlphaSettings(iterations=iterations))
        crown = backward_bound(network, network.output, coeffs, crown_bounds(network, box))
        outputs = network(points.reshape(-1, *network.input_shape)).reshape(points.shape[0], -1)
    assert torch.all(optimized.bound.lower >= crown.lower - 1e-9)
    rows = outputs @ spec.matrix[0].T
    slack = 1e-9 + soundness.ROUNDING[torch.float64] * optimized.bound.magnitude
    assert torch.all(rows >= optimized.bound.lower - slack)


def test_adam_matches_torch_adam_with_exponential_decay():
    ours = torch.nn.Parameter(torch.tensor([3.0, -2.0, 0.5]))
    theirs = torch.nn.Parameter(ours.detach().clone())
    adam = Adam([ours], learning_rate=0.1, decay=0.9)
    reference = torch.optim.Adam([theirs], lr=0.1)
    schedule = torch.optim.lr_scheduler.ExponentialLR(reference, 0.9)
    for _ in range(25):
        (ours ** 2 * torch.tensor([1.0, 3.0, 10.0])).sum().backward()
        adam.step()
        reference.zero_grad()
        (theirs ** 2 * torch.tensor([1.0, 3.0, 10.0])).sum().backward()
        reference.step()
        schedule.step()
    assert ours.grad is None
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)


def test_only_rules_with_free_parameters_declare_alpha():
    # the engine passes an alpha slot only where Rule.has_alpha says so (default False)
    from verifier.bounds.core import Rule
    from verifier.bounds.linear import Reduce

    assert Rule.has_alpha is False
    assert activation.ReLU().has_alpha and activation.Sigmoid().has_alpha
    assert bilinear.Multiply((2,), (2,)).has_alpha and bilinear.MatMulVariables((2, 2), (2, 2)).has_alpha
    assert not activation.Sign().has_alpha and not Reduce((0,), True, 1.0, (2,)).has_alpha


def test_intermediate_parameters_are_dropped_when_their_iterations_would_not_fit_the_time_left():
    """The stage's own CROWN pass sizes its iterations: with (almost) no time left only the final
    sweep is optimised; with no limit the intermediate sweeps' parameters are kept."""
    network = relu_network(0, width=16)
    box = Interval(torch.full((1, 1, 2), -1.0, dtype=torch.float64), torch.full((1, 1, 2), 1.0, dtype=torch.float64))
    unlimited, _ = optimize._start(network, box, AlphaSettings())
    assert unlimited.parameters()
    hurried, _ = optimize._start(network, box, AlphaSettings(), time_left=lambda: 1e-9)
    assert not hurried.parameters()


def test_intermediate_parameters_beyond_the_memory_budget_are_not_made():
    """A store with a capacity stops at it; the pass then gives CROWN's own intervals, and the
    stage keeps no intermediate parameters."""
    network = relu_network(0, width=16)
    box = Interval(torch.full((1, 1, 2), -1.0, dtype=torch.float64), torch.full((1, 1, 2), 1.0, dtype=torch.float64))
    with torch.no_grad():
        plain = crown_bounds(network, box)
        unlimited = AlphaStore()
        crown_bounds(network, box, unlimited)
        made = sum(p.numel() * p.element_size() for p in unlimited.parameters())
        capped = AlphaStore(capacity=made / 2)
        bounds = crown_bounds(network, box, capped)
    assert capped.full and 0 < capped.size <= made / 2
    for ours, theirs in zip(bounds[1:], plain[1:]):
        torch.testing.assert_close(ours.lower, theirs.lower)
        torch.testing.assert_close(ours.upper, theirs.upper)
    settings = AlphaSettings(intermediate_memory_mb=made / 2 * optimize.MEMORY_PER_PARAMETER_BYTE / 2**20)
    assert not optimize._start(network, box, settings)[0].parameters()
    assert optimize._start(network, box, AlphaSettings())[0].parameters()


def test_tightening_by_a_reference_never_rounds_past_it():
    """alpha-CROWN shifts the best bound so far onto the current one, for its gradient: on values
    of 1e16 (nn4sys) the shift rounded an upper bound of 0.5 down to 0."""
    from verifier.bounds.engine import _tighten

    for grad in (True, False):
        value = torch.tensor([1e16, -1e16], requires_grad=grad)
        upper = _tighten(value, torch.tensor([0.5, 0.5]), torch.lt)
        lower = _tighten(-value, torch.tensor([-0.5, -0.5]), torch.gt)
        assert torch.equal(upper, torch.tensor([0.5, -1e16])) and torch.equal(lower, torch.tensor([-0.5, 1e16]))
    value = torch.tensor([2.0], requires_grad=True)
    _tighten(value, torch.tensor([1.0]), torch.lt).sum().backward()
    assert value.grad.tolist() == [1.0]  # the gradient still flows through the current bound
