"""Sampled soundness checks: concrete values at points of the box must lie inside computed bounds.

Points: random corners of the box, uniform points, and points pushed towards the extremes of
random linear functions of each node by signed gradient steps. Every node is checked: its IBP
or CROWN interval, and (for CROWN) the backward bound started at that node itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.bounds.core import Interval
from verifier.bounds.engine import backward_bound, crown_bounds, interval_bounds
from verifier.bounds.forward import forward_bounds
from verifier.bounds.intermediate import intermediate_bounds
from verifier.bounds.network import Network

# Rounding allowed per unit of summed magnitude: about 1e4 roundings of each dtype's unit.
ROUNDING = {torch.float64: 1e-12, torch.float32: 1e-3}


def random_box(network: Network, generator: torch.Generator, batch: int = 2, radius: float = 0.3) -> Interval:
    shape = (batch, *network.input_shape)
    center = torch.randn(shape, generator=generator, dtype=torch.float64).to(network.dtype)
    widths = radius * torch.rand(shape, generator=generator, dtype=torch.float64).to(network.dtype)
    return Interval(center - widths, center + widths)


def node_bounds(network: Network, box: Interval, method: str, rows_per_node: int = 24,
                generator: torch.Generator | None = None) -> tuple[list[Interval], list[Tensor]]:
    """Bounds for every node, and the absolute rounding slack allowed for each.

    For 'forward', the intervals of forward-mode linear bounds, concretised at every node.
    For 'crown' (backward intermediate bounds) and 'both' (forward mode, then backward sweeps on
    the neurons it leaves unstable), each node's interval is replaced, on up to `rows_per_node`
    random neurons, by a backward sweep started at that node, so that the backward rules
    themselves are checked. Their
    slack is ROUNDING times the magnitude of the terms summed into the bound (the same quantity
    that sizes the proof margin): a bound that cancels terms of 1e10 down to 1e2 carries their
    rounding error.
    """
    if method in ("ibp", "forward"):
        bounds = interval_bounds(network, box) if method == "ibp" else forward_bounds(network, box).intervals
        # IBP's centre/radius sums cancel too: allow rounding of the largest value on the way.
        largest = max(float(torch.maximum(b.lower.abs(), b.upper.abs()).nan_to_num(0, 0, 0).max()) for b in bounds)
        return bounds, [torch.tensor(ROUNDING[network.dtype] * largest) for _ in bounds]
    bounds = crown_bounds(network, box) if method == "crown" else intermediate_bounds(network, box, method)
    checked, slacks = [], []
    for index, interval in enumerate(bounds):
        if index == 0:
            checked.append(interval)
            slacks.append(torch.zeros(()))
            continue
        numel = interval.lower[0].numel()
        batch = interval.lower.shape[0]
        count = min(numel, rows_per_node)
        positions = torch.randperm(numel, generator=generator)[:count]
        coeffs = torch.zeros(batch, 2 * count, numel, dtype=network.dtype)
        span = torch.arange(count)
        coeffs[:, span, positions] = 1.0
        coeffs[:, count + span, positions] = -1.0
        linear = backward_bound(network, index, coeffs.reshape(batch, 2 * count, *network.nodes[index].shape),
                                bounds)
        lower = interval.lower.reshape(batch, -1).clone()
        upper = interval.upper.reshape(batch, -1).clone()
        slack = torch.zeros_like(lower)
        # Replace (not intersect) the sampled neurons' bounds with the backward bound: this checks it.
        lower[:, positions] = linear.lower[:, :count]
        upper[:, positions] = -linear.lower[:, count:]
        slack[:, positions] = ROUNDING[network.dtype] * torch.maximum(linear.magnitude[:, :count],
                                                                      linear.magnitude[:, count:])
        checked.append(Interval(lower.reshape(interval.lower.shape), upper.reshape(interval.upper.shape)))
        slacks.append(slack.reshape(interval.lower.shape))
    return checked, slacks


def sample_points(network: Network, box: Interval, generator: torch.Generator, uniform: int = 64,
                  corners: int = 32, pushed_nodes: int = 6, steps: int = 20) -> Tensor:
    """Points [N, B, *input_shape] inside the box."""
    low, high = box.lower, box.upper
    shape = (uniform, *low.shape)
    parts = [low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64).to(low.dtype)]
    signs = torch.rand((corners, *low.shape), generator=generator) < 0.5
    parts.append(torch.where(signs, high, low))
    nodes = list(range(1, len(network.nodes)))
    chosen = [nodes[i] for i in torch.randperm(len(nodes), generator=generator)[:pushed_nodes].tolist()]
    for index in chosen:
        parts.append(_pushed(network, box, index, generator, steps))
    return torch.cat(parts)


def _pushed(network: Network, box: Interval, index: int, generator: torch.Generator, steps: int) -> Tensor:
    """Signed-gradient ascent and descent of random linear functions of node `index`."""
    low, high = box.lower, box.upper
    starts = 4
    direction = torch.randn((2 * starts, *low.shape[:1], *network.nodes[index].shape), generator=generator,
                            dtype=torch.float64).to(low.dtype)
    direction[starts:] = -direction[:starts]
    noise = torch.rand((2 * starts, *low.shape), generator=generator, dtype=torch.float64).to(low.dtype)
    x = low + (high - low) * noise
    for step in range(steps):
        x = x.detach().requires_grad_(True)
        value = network.forward_all(x.reshape(-1, *network.input_shape))[index]
        objective = (value.reshape(direction.shape) * direction).sum()
        if not objective.requires_grad:  # a piecewise-constant node (a comparison): nothing to follow
            break
        (gradient,) = torch.autograd.grad(objective, x)
        size = 0.25 * (1 - step / steps)
        x = torch.max(torch.min(x + size * (high - low) * gradient.sign(), high), low)
    return x.detach()


def violations(network: Network, bounds: list[Interval], slacks: list[Tensor], points: Tensor,
               relative: float) -> list[str]:
    """Descriptions of every node where a sampled value leaves its bounds by more than the tolerance."""
    count, batch = points.shape[:2]
    with torch.no_grad():
        values = network.forward_all(points.reshape(-1, *network.input_shape))
    found = []
    for index, (value, interval, slack) in enumerate(zip(values, bounds, slacks)):
        value = value.reshape(count, batch, *value.shape[1:])
        scale = 1 + torch.maximum(interval.lower.abs(), interval.upper.abs()).nan_to_num(posinf=0, neginf=0)
        tolerance = relative * scale + slack
        # a value on its bound counts as inside, also where both are infinite (Log(0) = -inf)
        below = torch.where(value >= interval.lower, -torch.inf, interval.lower - value - tolerance).max()
        above = torch.where(value <= interval.upper, -torch.inf, value - interval.upper - tolerance).max()
        if below > 0 or above > 0:
            found.append(f"node {index} ({network.nodes[index].label}): out of bounds by {max(below, above):.3g}")
    return found


def check(network: Network, method: str, seed: int = 0, batch: int = 2, radius: float = 0.3,
          box: Interval | None = None) -> list[str]:
    """Sample a box (or use `box`), bound it with `method`, return the violations found."""
    generator = torch.Generator().manual_seed(seed)
    box = box if box is not None else random_box(network, generator, batch, radius)
    with torch.no_grad():
        bounds, slacks = node_bounds(network, box, method, generator=generator)
    points = sample_points(network, box, generator)
    relative = 1e-9 if network.dtype == torch.float64 else 2e-5
    return violations(network, bounds, slacks, points, relative)
