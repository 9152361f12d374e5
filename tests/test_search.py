"""Branch and bound: split terms sound on their sub-domains, no proof of a violated property, and
proofs that one bound pass cannot give."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import shared_or_skip
from tests.graphs import GraphWriter
from verifier import search
from verifier.bounds.core import Interval
from verifier.bounds.engine import backward_bound, crown_bounds
from verifier.bounds.patches import densify
from verifier.bounds.relaxation import AlphaStore
from verifier.graph import build_network
from verifier.load import load_model
from verifier.prove import prove
from verifier.search import branch_and_bound, split_nodes
from verifier.settings import BranchSettings
from verifier.spec import Spec
from verifier.vnnlib import parse_file, parse_text


def relu_network(seed: int, inputs: int = 2, width: int = 12, layers: int = 3, activation: str = "Relu"):
    """A random float64 MLP with one output (ReLU, or another activation)."""
    g = GraphWriter(np.random.default_rng(seed))
    x = g.dense("x", inputs, width)
    for _ in range(layers - 1):
        x = g.dense(g.op(activation, [x]), width, width)
    out = g.dense(g.op(activation, [x]), width, 1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlp.onnx"
        onnx.save(g.model([1, inputs], out, [1, 1]), path)
        return build_network(load_model(str(path))).double()


def grid(low: float, high: float, inputs: int, steps: int) -> torch.Tensor:
    axes = [torch.linspace(low, high, steps, dtype=torch.float64)] * inputs
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, inputs)


def smallest_output(network, low: float, high: float, inputs: int) -> float:
    """The least output found by a grid and then signed-gradient descent from its 64 best points
    (an upper estimate of the true minimum, close on these small 2-D networks)."""
    points = grid(low, high, inputs, 201)
    best = points[network(points).flatten().argsort()[:64]].clone()
    for step in range(200):
        best.requires_grad_(True)
        grad, = torch.autograd.grad(network(best).sum(), best)
        with torch.no_grad():
            best = (best - 0.01 * 0.98 ** step * grad.sign()).clamp(low, high)
    return float(network(best).min())


def spec_below(threshold: float, low: float, high: float, inputs: int) -> Spec:
    """'Y_0 <= threshold somewhere in the box' (proved: Y_0 > threshold everywhere)."""
    box = "".join(f"(assert (>= X_{i} {low}))(assert (<= X_{i} {high}))" for i in range(inputs))
    text = "".join(f"(declare-const X_{i} Real)" for i in range(inputs))
    text += f"(declare-const Y_0 Real){box}(assert (<= Y_0 {threshold!r}))"
    return Spec.build(parse_text(text), (1, inputs), torch.float64)


@pytest.mark.parametrize("seed", range(6))
def test_split_terms_are_sound_on_their_sub_domain(seed):
    """Random splits, random alpha and beta >= 0: the bound holds at every sampled point of the
    sub-domain (the points of the box where the assumed signs hold)."""
    network = relu_network(seed)
    generator = torch.Generator().manual_seed(seed)
    box = Interval(torch.full((1, 1, 2), -1.0, dtype=torch.float64), torch.full((1, 1, 2), 1.0, dtype=torch.float64))
    root = crown_bounds(network, box)
    points = grid(-1.0, 1.0, 2, 161)
    values = network.forward_all(points.reshape(-1, 1, 2))
    reference = list(root)
    signs, inside = {}, torch.ones(points.shape[0], dtype=torch.bool)
    anchor = int(torch.randint(points.shape[0], (1,), generator=generator))
    for z in split_nodes(network):
        lower, upper = root[z].lower.clone(), root[z].upper.clone()
        unstable = ((lower < 0) & (upper > 0)).flatten().nonzero().flatten()
        chosen = unstable[torch.randperm(unstable.numel(), generator=generator)[:2]]
        sign = torch.zeros_like(lower).flatten()
        # the signs at one sampled point, so that the sub-domain is not empty
        at_anchor = values[z].reshape(points.shape[0], -1)[anchor, chosen]
        sign[chosen] = torch.where(at_anchor <= 0, 1.0, -1.0).double()
        signs[z] = sign.reshape(lower.shape)
        lower = torch.where(signs[z] < 0, lower.clamp(min=0), lower)
        upper = torch.where(signs[z] > 0, upper.clamp(max=0), upper)
        reference[z] = Interval(lower, upper)
        held = (values[z].reshape(points.shape[0], -1) * sign) <= 0
        inside &= held.all(1)
    assert inside.any()
    bounds = crown_bounds(network, box, reference=reference, refine=seed % 2 == 0)
    alphas = AlphaStore()
    coeffs = torch.randn(1, 4, *network.output_shape, generator=generator, dtype=torch.float64)
    betas = {z: torch.rand(1, 4, *s.shape[1:], generator=generator, dtype=torch.float64) * 3 for z, s in signs.items()}

    def visit(index, node_coeffs):
        return densify(node_coeffs) + betas[index] * signs[index].unsqueeze(1) if index in betas else node_coeffs

    backward_bound(network, network.output, coeffs, bounds, alphas, "final", visit)  # creates alpha
    with torch.no_grad():
        for param in alphas.parameters():
            param.copy_(torch.rand(param.shape, generator=generator, dtype=torch.float64))
    bound = backward_bound(network, network.output, coeffs, bounds, alphas, "final", visit)
    outputs = values[network.output].reshape(points.shape[0], -1)[inside]
    rows = outputs @ coeffs.reshape(4, -1).T
    assert bool((bound.lower[0] <= rows.min(0).values + 1e-9).all())


@pytest.mark.parametrize("on, candidates", [("relu", 1), ("relu", 3), ("input", 1)])
@pytest.mark.parametrize("seed", range(4))
def test_never_proves_a_violated_property_and_proves_what_crown_cannot(seed, on, candidates):
    """Just above the least output found, the property is violated and must stay unproved; 30% of
    the way from there down to CROWN's bound, CROWN fails and branch and bound proves it (with the
    score alone, and with filtered smart branching)."""
    network = relu_network(seed, width=12)
    smallest = smallest_output(network, -0.5, 0.5, 2)
    crown_lower = float(prove(network, spec_below(smallest, -0.5, 0.5, 2), "crown").lower[0, 0])
    assert crown_lower < smallest - 0.01
    settings = BranchSettings(batch=16, iterations=5, candidates=candidates)
    for threshold, provable in ((smallest + 1e-3, False), (smallest - 0.3 * (smallest - crown_lower), True)):
        spec = spec_below(threshold, -0.5, 0.5, 2)
        crown = prove(network, spec, "crown")
        assert not crown.all_proved
        stop = time.monotonic() + (20 if provable else 4)
        result = branch_and_bound(network, spec, 0, crown.intervals, settings,
                                  lambda stop=stop: stop - time.monotonic(), on)
        assert result.proved == provable, (threshold, smallest, result)


@pytest.fixture(scope="module")
def mnist_256x2():
    root = shared_or_skip() / "mnistfc"
    return build_network(load_model(str(root / "mnist-net_256x2.onnx"))), root


@pytest.mark.parametrize("prop, verdict", [("prop_0_0.03", "unsat"), ("prop_0_0.05", "sat")])
def test_mnistfc_proof_and_refusal(mnist_256x2, prop, verdict):
    """A ground-truth unsat instance that alpha-CROWN leaves open is proved; a sat one is not."""
    network, root = mnist_256x2
    spec = Spec.build(parse_file(str(root / f"{prop}.vnnlib")), network.input_shape, network.dtype)
    alpha = prove(network, spec, "alpha-crown")
    assert not alpha.all_proved
    deadline = time.monotonic() + (15 if verdict == "unsat" else 6)
    result = branch_and_bound(network, spec, 0, alpha.intervals, BranchSettings(), lambda: deadline - time.monotonic())
    assert result.proved == (verdict == "unsat"), result


def _wrong_proofs(on: str) -> int:
    wrong = 0
    for seed in range(6):
        network = relu_network(seed, width=12)
        spec = spec_below(smallest_output(network, -0.5, 0.5, 2) + 1e-3, -0.5, 0.5, 2)
        crown = prove(network, spec, "crown")
        stop = time.monotonic() + 4
        wrong += branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(batch=16, iterations=5),
                                  lambda stop=stop: stop - time.monotonic(), on).proved
    return wrong


def test_the_check_catches_split_terms_of_the_wrong_sign(monkeypatch):
    """With each child's constraint sign flipped (beta terms >= 0 on the sub-domain), some
    violated property gets 'proved': the test above can fail."""
    original = search._split

    def flipped(parents, cut_points):
        lower, upper, signs, cuts = original(parents, cut_points)
        return lower, upper, {z: -s for z, s in signs.items()}, cuts

    monkeypatch.setattr(search, "_split", flipped)
    assert _wrong_proofs("relu") > 0


def test_the_check_catches_halves_that_miss_part_of_the_box(monkeypatch):
    original = search._halve

    def lower_halves_twice(parents):
        lower, upper = original(parents)
        count = len(parents)
        return torch.cat([lower[:count], lower[:count]]), torch.cat([upper[:count], upper[:count]])

    monkeypatch.setattr(search, "_halve", lower_halves_twice)
    assert _wrong_proofs("input") > 0


def test_without_a_time_limit_the_search_runs_to_its_end():
    network = relu_network(1, width=12)
    smallest = smallest_output(network, -0.5, 0.5, 2)
    spec = spec_below(smallest - 0.05, -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    for on in ("relu", "input"):
        result = branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(batch=16), lambda: float("inf"), on)
        assert result.reason in ("proved", "no split left", "too many domains"), result


def test_the_split_score_is_the_relu_upper_line_intercept():
    # branch and bound asks the rule how loose it is; for ReLU that is the chord's intercept at 0
    from verifier.bounds.activation import ReLU

    lower, upper = torch.tensor([-1.0, -3.0, -0.5]), torch.tensor([1.0, 1.0, 4.0])
    relaxation = ReLU().relax(lower, upper)
    assert torch.allclose(ReLU().split_score(lower, upper)[0], relaxation.upper_intercept)


@pytest.mark.parametrize("favoured", [0, 1, 2])
def test_filtered_branching_splits_the_candidate_whose_children_bound_best(monkeypatch, favoured):
    """Among the best-scored neurons, the one whose children's estimated bounds are closest to
    proved is split; the estimate of each child is a lower bound of the outputs on that child."""
    network = relu_network(1, width=12)
    spec = spec_below(smallest_output(network, -0.5, 0.5, 2) - 0.01, -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    seen_scores, estimates = [], []
    real_scores, real_children = search._Search._scores, search._Search._children_bounds

    def scores(self, *args):
        seen_scores.append(real_scores(self, *args))
        return seen_scores[-1]

    def children(self, bounds, domains, choice):
        estimates.append((real_children(self, bounds, domains, choice), bounds, choice))
        fake = torch.full((2, choice.shape[1], choice.shape[0], self.coeffs.shape[1]), -10.0, dtype=torch.float64)
        fake[:, favoured] = 5.0
        return fake

    monkeypatch.setattr(search._Search, "_scores", scores)
    monkeypatch.setattr(search._Search, "_children_bounds", children)
    case = search._Search(network, spec, 0, crown.intervals, BranchSettings(candidates=3, iterations=2))
    domains = case.bound_children(None)
    assert len(domains) == 1
    pick = seen_scores[0].score.topk(3, dim=1).indices[0, favoured]
    assert domains.choice[0].tolist() == [int(seen_scores[0].owners[pick]), int(seen_scores[0].neurons[pick])]

    # the real estimates, checked against sampled points of each child
    real, bounds, choice = estimates[0]
    points = grid(-0.5, 0.5, 2, 60)
    values = network.forward_all(points)
    outputs = values[network.output].reshape(points.shape[0], -1) @ case.coeffs.reshape(case.coeffs.shape[1], -1).T
    for candidate in range(3):
        z, neuron = (int(v) for v in choice[0, candidate])
        pre = values[z].reshape(points.shape[0], -1)[:, neuron]
        for side, inside in enumerate([pre <= 0, pre >= 0]):
            if bool(inside.any()):
                assert bool((real[side, candidate, 0] <= outputs[inside].min(0).values + 1e-9).all())


def test_children_start_from_their_parents_alphas(monkeypatch):
    """Each child's final-sweep alpha starts at its own parent's optimised values (warm start),
    not at CROWN's; the betas likewise."""
    network = relu_network(2, width=12)
    spec = spec_below(smallest_output(network, -0.5, 0.5, 2) - 0.01, -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    case = search._Search(network, spec, 0, crown.intervals, BranchSettings(iterations=3))
    parents = case.bound_children(None)
    parents = search._Domains.join([parents, case.bound_children(parents)])  # several different parents
    assert len(parents) >= 2 and parents.alphas
    starts = []
    real = search.AlphaStore.starting_from

    def record(params):
        starts.append({k: [p.clone() for p in group] for k, group in params.items()})
        return real(params)

    monkeypatch.setattr(search.AlphaStore, "starting_from", staticmethod(record))
    case.bound_children(parents)
    for key, group in parents.alphas.items():
        for parent, start in zip(group, starts[0][key]):
            assert torch.equal(start, torch.cat([parent, parent]))
    differs = any(not torch.equal(group[0][0], group[0][1]) for group in parents.alphas.values())
    assert differs  # the parents' values are their own, so a mix-up would be seen


def violation_probe(network, threshold: float, probed: list):
    """A probe that confirms a point whose output is <= threshold (as onnxruntime would)."""
    def probe(points):
        probed.append(points)
        values = network(points.reshape(-1, 1, points.shape[-1])).flatten()
        hit = (values <= threshold).nonzero().flatten()
        return points[hit[0]] if hit.numel() else None
    return probe


@pytest.mark.parametrize("seed", range(3))
def test_input_splitting_stops_at_a_bound_minimiser_that_violates(seed):
    """Just above the least output, the corners where the sub-boxes' bounds are lowest close in on
    the violation: the search ends with it, a point of the box that violates."""
    network = relu_network(seed, width=12)
    threshold = smallest_output(network, -0.5, 0.5, 2) + 0.02
    spec = spec_below(threshold, -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    probed: list = []
    stop = time.monotonic() + 10
    result = branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(batch=16, iterations=5),
                              lambda: stop - time.monotonic(), "input", violation_probe(network, threshold, probed))
    assert result.reason == "counterexample" and not result.proved, result
    point = result.counterexample
    assert bool(((point >= -0.5) & (point <= 0.5)).all())
    assert float(network(point.reshape(1, 1, 2))) <= threshold


def _clock(calls_with_time: int):
    """A time_left that has time for its first `calls_with_time` calls, then none."""
    calls = iter([100.0] * calls_with_time)
    return lambda: next(calls, -1.0)


@pytest.mark.parametrize("intermediate", ["forward", "backward", "both"])
def test_input_splitting_stops_inside_a_pass_when_the_time_runs_out(intermediate):
    """The time is spent after the first split is started: its children's pass stops (the search
    ends with the root only), by every intermediate method; before, it ran to its end."""
    network = relu_network(0, width=12)
    spec = spec_below(smallest_output(network, -0.5, 0.5, 2) + 1e-3, -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    assert not crown.all_proved
    # the gate and the first step's budget, then none
    result = branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(batch=16, iterations=5),
                              _clock(2), "input", intermediate=intermediate)
    assert (result.proved, result.reason, result.domains_bounded) == (False, "time", 1), result


def test_input_splitting_starts_from_the_bound_pass_intervals(monkeypatch):
    """The root box is the one the bound pass before the search bounded: its intervals are
    reused, not computed again (on nn4sys normal_1000 that pass takes 11 s)."""
    passes = []
    monkeypatch.setattr(search, "intermediate_bounds", lambda *args, **kwargs: passes.append(args))
    network = relu_network(0, width=12)
    spec = spec_below(smallest_output(network, -0.5, 0.5, 2) + 1e-3, -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    result = branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(batch=16, iterations=5),
                              _clock(1), "input")
    assert (result.domains_bounded, passes) == (1, [])


def test_relu_splitting_probes_the_corner_where_each_open_row_is_lowest():
    """ReLU sub-domains keep the whole box, so their bound minimisers are corners of it; a
    violation at a corner is found at the root, and every probed point is a corner."""
    network = relu_network(2, inputs=4, width=12)
    corners = torch.cartesian_prod(*[torch.tensor([-0.5, 0.5], dtype=torch.float64)] * 4).reshape(-1, 1, 4)
    threshold = float(network(corners).min()) + 1e-3
    spec = spec_below(threshold, -0.5, 0.5, 4)
    crown = prove(network, spec, "crown")
    assert not crown.all_proved
    probed: list = []
    result = branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(batch=16, iterations=5),
                              lambda: 10.0, "relu", violation_probe(network, threshold, probed))
    assert result.reason == "counterexample", result
    assert all(bool((p.abs() == 0.5).all()) for p in probed)


def test_a_probe_that_confirms_nothing_changes_no_verdict():
    network = relu_network(0, width=12)
    smallest = smallest_output(network, -0.5, 0.5, 2)
    crown_lower = float(prove(network, spec_below(smallest, -0.5, 0.5, 2), "crown").lower[0, 0])
    spec = spec_below(smallest - 0.3 * (smallest - crown_lower), -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    probed: list = []
    stop = time.monotonic() + 20
    result = branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(batch=16, iterations=5),
                              lambda: stop - time.monotonic(), "relu", lambda p: probed.append(p))
    assert result.proved and result.counterexample is None and probed


def sigmoid_search(seed: int, fraction: float, seconds: float):
    """Branch and bound (neuron splits) on a random sigmoid or tanh network whose property is
    'output <= t', t `fraction` of the way from the least output found down to CROWN's bound
    (fraction < 0: violated just above that output); None where alpha-CROWN proves it alone."""
    network = relu_network(seed, width=10, activation=("Sigmoid", "Tanh")[seed % 2])
    smallest = smallest_output(network, -2.0, 2.0, 2)
    crown_lower = float(prove(network, spec_below(smallest, -2.0, 2.0, 2), "crown").lower[0, 0])
    threshold = smallest - fraction * (smallest - crown_lower) if fraction >= 0 else smallest + 1e-3
    spec = spec_below(threshold, -2.0, 2.0, 2)
    alpha = prove(network, spec, "alpha-crown")
    if alpha.all_proved:
        return None
    stop = time.monotonic() + seconds
    return branch_and_bound(network, spec, 0, alpha.intervals, BranchSettings(batch=16, iterations=5),
                            lambda: stop - time.monotonic(), "relu")


def sigmoid_leaves(seed: int, steps: int = 5):
    """A sigmoid or tanh network, grid points of its box with every node's values, and the
    domains after `steps` rounds of splitting every open one (a property nothing proves)."""
    network = relu_network(seed, width=10, activation=("Sigmoid", "Tanh")[seed % 2])
    spec = spec_below(1e6, -2.0, 2.0, 2)
    crown = prove(network, spec, "crown")
    searcher = search._Search(network, spec, 0, crown.intervals, BranchSettings(iterations=3))
    domains = searcher.bound_children(None)
    for _ in range(steps):
        domains = searcher.bound_children(domains)
    points = grid(-2.0, 2.0, 2, 121)
    return searcher, domains, network.forward_all(points.reshape(-1, 1, 2))


def in_domains(searcher, domains, values) -> torch.Tensor:
    """[D, points] whether each point's split neurons lie in each domain's intervals."""
    inside = torch.ones(len(domains), values[0].shape[0], dtype=torch.bool)
    for z in searcher.splits:
        value = values[z].reshape(1, values[z].shape[0], -1)
        low, high = domains.lower[z].reshape(len(domains), 1, -1), domains.upper[z].reshape(len(domains), 1, -1)
        split = domains.signs[z].reshape(len(domains), 1, -1) != 0
        inside &= (~split | ((value >= low - 1e-12) & (value <= high + 1e-12))).all(-1)
    return inside


@pytest.mark.parametrize("seed", range(4))
def test_sigmoid_splits_cover_the_box_and_every_domain_bound_holds_on_its_points(seed):
    """After rounds of splitting sigmoid and tanh inputs inside their intervals, the domains
    still cover every grid point of the box, and each domain's bound is below the output at every
    grid point in it (split constraints, their constants and inherited bounds included)."""
    searcher, domains, values = sigmoid_leaves(seed)
    assert len(domains) == 32 and any(bool(s.any()) for s in domains.signs.values())
    inside = in_domains(searcher, domains, values)
    assert bool(inside.any(0).all())
    outputs = values[searcher.network.output].reshape(1, -1)
    assert bool((torch.where(inside, outputs, torch.inf) >= domains.bound.lower - 1e-9).all())


def test_the_check_catches_sigmoid_children_that_miss_part_of_their_parent(monkeypatch):
    """With each below child's upper bound pulled halfway down to its lower one, the domains no
    longer cover the box."""
    original = search._split

    def narrowed(parents, cut_points):
        lower, upper, signs, cuts = original(parents, cut_points)
        count = len(parents)
        for z in upper:
            upper[z][:count] = torch.where(signs[z][:count] > 0, (lower[z][:count] + upper[z][:count]) / 2,
                                           upper[z][:count])
        return lower, upper, signs, cuts

    monkeypatch.setattr(search, "_split", narrowed)
    searcher, domains, values = sigmoid_leaves(0)
    assert not bool(in_domains(searcher, domains, values).any(0).all())


def test_the_check_catches_split_constants_of_the_wrong_sign(monkeypatch):
    original = search._with_cuts
    monkeypatch.setattr(search, "_with_cuts", lambda bound, betas, signs, cuts: original(
        bound, betas, signs, {z: -c for z, c in cuts.items()}))
    failed = 0
    for seed in range(4):
        searcher, domains, values = sigmoid_leaves(seed)
        inside = in_domains(searcher, domains, values)
        outputs = values[searcher.network.output].reshape(1, -1)
        failed += not bool((torch.where(inside, outputs, torch.inf) >= domains.bound.lower - 1e-9).all())
    assert failed > 0


def test_the_root_is_not_bounded_when_its_estimated_cost_does_not_fit():
    network = relu_network(1, width=12)
    spec = spec_below(smallest_output(network, -0.5, 0.5, 2) - 0.05, -0.5, 0.5, 2)
    crown = prove(network, spec, "crown")
    result = branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(), lambda: 1.0, "relu",
                              root_seconds=1.0)
    assert result.reason == "time" and result.domains_bounded == 0
    result = branch_and_bound(network, spec, 0, crown.intervals, BranchSettings(), lambda: 2.0, "relu",
                              root_seconds=1.0)
    assert result.domains_bounded > 0


@pytest.mark.parametrize("on", ["relu", "input"])
def test_the_bound_pass_bound_is_a_floor_for_the_root_domain(on):
    """The search's first bound of the box starts from fresh parameters; the bound pass's own
    bound of the rows (alpha-CROWN's) holds on every sub-domain, so the root keeps the higher."""
    network = relu_network(4, width=16, activation="Sigmoid")
    spec = spec_below(smallest_output(network, -0.5, 0.5, 2) + 1e-3, -0.5, 0.5, 2)
    alpha = prove(network, spec, "alpha-crown")
    assert not alpha.all_proved and alpha.bound is not None
    kind = search._Search if on == "relu" else search._BoxSearch
    settings = BranchSettings(iterations=1)
    plain = kind(network, spec, 0, alpha.intervals, settings).bound_children(None)
    floored = kind(network, spec, 0, alpha.intervals, settings, root_bound=alpha.bound).bound_children(None)
    assert bool((floored.bound.lower >= alpha.bound.lower).all())
    assert bool((floored.bound.lower >= plain.bound.lower).all())
    assert bool((floored.bound.lower > plain.bound.lower).any())  # CROWN's root is looser here
