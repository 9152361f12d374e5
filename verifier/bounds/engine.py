"""IBP and CROWN over a Network. Knows no operator: every step goes through a node's rule.

CROWN computes a linear lower bound of <A, z_start> by walking the ancestors of `start` in reverse
topological order: each rule maps the coefficients of its output to its inputs (summed where a
value has several consumers) and adds a bias; at the input the linear function is concretized
over the box. Intermediate bounds, which relaxations need, come from the same sweep started at
each node that feeds a relaxed operator, restricted to the neurons that operator says matter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.bounds.core import SWEEP_TERMS, Ball, Interval, rounding
from verifier.bounds.network import Network
from verifier.bounds.patches import Patches, combine, densify, identity_patches
from verifier.bounds.relaxation import AlphaStore

# Largest coefficient tensor (elements) one backward sweep may hold; larger work is chunked.
COEFF_BUDGET = 1 << 25

# A hook of backward_bound: (node index, the coefficients reaching it) -> coefficients to go on with.
Visit = Callable[[int, "Tensor | Patches"], "Tensor | Patches"]


class OutOfTime(Exception):
    """A bound pass reached its deadline before it finished: it gives no bounds."""


def check_time(time_left: Callable[[], float] | None, next_step: float = 0.0) -> None:
    """Raise OutOfTime once `time_left()` (seconds) is spent, or is shorter than `next_step`, the
    measured cost of the sweep about to start (the last one like it): the passes call it between
    sweeps, and a sweep between the nodes it passes."""
    if time_left is not None and time_left() <= next_step:
        raise OutOfTime


@dataclass
class LinearBound:
    """Lower bounds [B, m] of linear functions, with the magnitude of the terms summed into them.

    `magnitude` (same shape) bounds the absolute values that were added up, so that a caller can
    size the floating-point margin of a comparison with the bound.
    """

    lower: Tensor
    magnitude: Tensor


def _sanitize(bounds: Interval) -> Interval:
    """NaN (from inf - inf outside a function's domain) means unbounded."""
    return Interval(torch.where(torch.isnan(bounds.lower), -torch.inf, bounds.lower),
                    torch.where(torch.isnan(bounds.upper), torch.inf, bounds.upper))


Errors = dict[int, "Tensor | None"]


def node_interval(network: Network, index: int, bounds: list[Interval | None],
                  errors: Errors | None = None) -> Interval:
    """IBP of node `index` from its inputs' intervals, widened by the rounding of the operation
    as onnxruntime runs it (so the interval holds the value the deployed model computes)."""
    node = network.nodes[index]
    interval = _sanitize(network.rules[node.rule].ibp(*(bounds[i] for i in node.inputs)))
    error = execution_error(network, index, bounds, errors)  # after ibp, whose sums it reuses
    return interval if error is None else Interval(interval.lower - error, interval.upper + error)


def execution_error(network: Network, index: int, bounds: list[Interval | None],
                    errors: Errors | None = None) -> Tensor | None:
    """The rounding bound of node `index`'s own operation (see Rule.execution_error), memoised."""
    if errors is not None and index in errors:
        return errors[index]
    node = network.nodes[index]
    if network.real_arithmetic and not network.rules[node.rule].rounding_is_the_operation:
        return None
    inputs = [bounds[i] for i in node.inputs]
    if any(x is None for x in inputs):
        raise ValueError(f"{node.label}: the intervals of its inputs are needed for its rounding error")
    with torch.no_grad():  # a constant for the optimisers, as in backward_bound
        error = network.rules[node.rule].execution_error(*inputs)
    if errors is not None:
        errors[index] = error
    return error


def interval_bounds(network: Network, box: Interval) -> list[Interval]:
    """IBP: an interval for every node, for the batch of input regions `box` ([B, *input_shape]):
    boxes, or balls, whose first linear layers are bounded over the ball itself."""
    bounds = [box]
    first_layers = ball_layers(network) if isinstance(box, Ball) else set()
    for index in range(1, len(network.nodes)):
        current = node_interval(network, index, bounds)
        if index in first_layers:
            current = _refine(network, index, current, bounds, every_neuron=True)
        bounds.append(current)
    return bounds


def ball_layers(network: Network) -> set[int]:
    """Linear nodes fed by the input or by a selection of it (a flatten, a slice): over a ball,
    their intervals come from the dual norm (one sweep each), not from the ball's bounding box,
    which is sqrt(n) times too wide for an L2 ball of n inputs."""
    views = {0}
    layers = set()
    for index, node in enumerate(network.nodes[1:], start=1):
        rule = network.rules[node.rule]
        if len(node.inputs) != 1 or node.inputs[0] not in views:
            continue
        if rule.selects_only:
            views.add(index)
        elif rule.has_linear_rule and not rule.needs_bounds:
            layers.add(index)
    return layers


def concretize_input(coeffs: Tensor | Patches, region: Interval) -> LinearBound:
    """Lower bound of <coeffs, x> [B, m] over the input region: a box, or a Ball, over whose
    balls it is <a, point> - eps ||a||_dual (Hoelder), and over the box elsewhere; kept only
    where it beats the region's bounding box.

    The magnitude is the bounding box's (sum |a| max(|l|, |u|)), which bounds every term summed
    here too: |a_i point_i| and eps ||a||_dual <= eps ||a||_1 both fit under it.
    """
    box = interval_concretize(coeffs, region)
    if not isinstance(region, Ball):
        return box
    flat = densify(coeffs)
    flat = flat.reshape(flat.shape[0], flat.shape[1], -1)
    outside = torch.ones(flat.shape[-1], dtype=torch.bool, device=flat.device)
    lower = 0.0
    for part in region.parts:
        outside[part.index] = False
        rows = flat[:, :, part.index]
        dual = torch.linalg.vector_norm(rows, ord=part.dual_norm, dim=-1)
        lower = lower + torch.bmm(rows, part.point.unsqueeze(-1)).squeeze(-1) - part.eps.unsqueeze(1) * dual
    if bool(outside.any()):
        rest = Interval(region.lower.reshape(flat.shape[0], -1)[:, outside],
                        region.upper.reshape(flat.shape[0], -1)[:, outside])
        lower = lower + interval_concretize(flat[:, :, outside], rest).lower
    return LinearBound(torch.maximum(lower, box.lower), box.magnitude)


def interval_concretize(coeffs: Tensor | Patches, bounds: Interval) -> LinearBound:
    """Lower bound of <coeffs, z> [B, m] for z in the interval (coeffs [B, m, *shape])."""
    if isinstance(coeffs, Patches):
        finite = bool(torch.isfinite(bounds.lower).all() and torch.isfinite(bounds.upper).all())
        if not finite:
            return interval_concretize(coeffs.to_dense(), bounds)
        size = torch.maximum(bounds.lower.abs(), bounds.upper.abs())
        center, radius, size = coeffs.windows(bounds.center, bounds.radius, size)
        absolute = coeffs.values.abs()
        return LinearBound((coeffs.values * center - absolute * radius).sum(dim=(2, 3, 4)),
                           (absolute * size).sum(dim=(2, 3, 4)))
    flat = coeffs.reshape(coeffs.shape[0], coeffs.shape[1], -1)
    if bool(torch.isfinite(bounds.lower).all() and torch.isfinite(bounds.upper).all()):
        # A c - |A| r and |A| max(|l|, |u|), as two batched matrix products
        batch = bounds.lower.shape[0]
        lower, upper = bounds.lower.reshape(batch, -1), bounds.upper.reshape(batch, -1)
        center, radius = ((upper + lower) / 2).unsqueeze(-1), ((upper - lower) / 2).unsqueeze(-1)
        size = torch.maximum(lower.abs(), upper.abs()).unsqueeze(-1)
        size_terms = torch.bmm(flat.abs(), torch.cat([radius, size], dim=-1))
        return LinearBound(torch.bmm(flat, center).squeeze(-1) - size_terms[..., 0], size_terms[..., 1])
    lower = bounds.lower.reshape(bounds.lower.shape[0], 1, -1)
    upper = bounds.upper.reshape(bounds.upper.shape[0], 1, -1)
    positive = flat.clamp(min=0)
    negative = flat - positive
    # where a coefficient is 0 an infinite bound must not produce NaN
    value = torch.where(positive != 0, positive * lower, 0.0) + torch.where(negative != 0, negative * upper, 0.0)
    size = torch.maximum(lower.abs(), upper.abs())
    magnitude = torch.where(flat != 0, flat.abs() * size, 0.0)
    return LinearBound(value.sum(-1), magnitude.sum(-1))


def _error_term(coeffs: Tensor | Patches, error: Tensor) -> Tensor:
    """sum |coeffs| * error per row [B, m]: the worst a node's rounding `error` [B, *shape] moves
    the linear function (inf where the error is, unless the coefficient is 0)."""
    if isinstance(coeffs, Patches):
        if not bool(torch.isfinite(error).all()):
            return _error_term(coeffs.to_dense(), error)
        # the largest error of the map under every window: cruder than per cell, but it needs no
        # unfolding, and these errors are a few ulps of the values
        largest = error.reshape(error.shape[0], -1).amax(1)
        return coeffs.values.abs().sum(dim=(2, 3, 4)) * largest.unsqueeze(1)
    flat = coeffs.reshape(coeffs.shape[0], coeffs.shape[1], -1).abs()
    error = error.reshape(error.shape[0], -1, 1)
    if bool(torch.isfinite(error).all()):
        return torch.bmm(flat, error).squeeze(-1)
    return torch.where(flat != 0, flat * error.transpose(1, 2), 0.0).sum(-1)


def backward_bound(network: Network, start: int, coeffs: Tensor | Patches,
                   bounds: list[Interval | None], alphas: AlphaStore | None = None, key: object = None,
                   visit: Visit | None = None, errors: Errors | None = None,
                   time_left: Callable[[], float] | None = None) -> LinearBound:
    """Lower bound of <coeffs, z_start> over the input box bounds[0]; coeffs [B, m, *shape(start)].

    `bounds` must hold intervals for every node whose rule needs them; nodes without a linear
    rule are concretized with their interval (sound, looser). With `alphas` (a dict the
    optimiser owns), rules with free relaxation parameters read them from slot (key, node).
    `visit(index, coeffs)` sees the complete coefficients of every node the sweep reaches and
    returns the ones to continue with (branch and bound reads them and adds split terms there).
    Every node whose operation rounds in the deployed model adds the worst case of its rounding
    error (`execution_error`, memoised in `errors` when given) under its coefficients. Raises
    OutOfTime when `time_left()` is spent between two of its nodes: one sweep from a deep node of
    TinyYOLO took 3 s where each sweep before it took 0.1 s, so no estimate from them would do.
    """
    errors = {} if errors is None else errors
    pending: dict[int, Tensor | Patches] = {start: coeffs}
    lead = coeffs.values.shape[:2] if isinstance(coeffs, Patches) else coeffs.shape[:2]
    template = coeffs.values if isinstance(coeffs, Patches) else coeffs
    total = LinearBound(template.new_zeros(lead), template.new_zeros(lead))
    for index in reversed(network.ancestors(start)):
        node_coeffs = pending.pop(index, None)
        if node_coeffs is None:
            continue
        check_time(time_left)
        if visit is not None:
            node_coeffs = visit(index, node_coeffs)
        if index == 0:
            part = concretize_input(node_coeffs, bounds[0])
            total = LinearBound(total.lower + part.lower, total.magnitude + part.magnitude)
            continue
        node = network.nodes[index]
        rule = network.rules[node.rule]
        error = execution_error(network, index, bounds, errors)
        if error is not None:
            # a constant for the optimisers: no gradient, so autograd keeps no copy of |coeffs|
            with torch.no_grad():
                part = _error_term(node_coeffs, error)
            total = LinearBound(total.lower - part, total.magnitude + part)
        if not rule.has_linear_rule:
            part = interval_concretize(densify(node_coeffs), bounds[index])
            total = LinearBound(total.lower + part.lower, total.magnitude + part.magnitude)
            continue
        inputs = [bounds[i] for i in node.inputs] if rule.needs_bounds else [None] * len(node.inputs)
        if isinstance(node_coeffs, Patches) and not rule.accepts_patches:
            node_coeffs = node_coeffs.to_dense()
        if alphas is not None and rule.has_alpha and not alphas.full:
            step = rule.backward(node_coeffs, *inputs, alpha=alphas.slot((key, index)))
        else:
            step = rule.backward(node_coeffs, *inputs)
        if not isinstance(step.bias, float):
            total = LinearBound(total.lower + step.bias, total.magnitude + step.bias.abs())
        for source, source_coeffs in zip(node.inputs, step.inputs):
            if source_coeffs is None:
                continue
            pending[source] = combine(pending[source], source_coeffs) if source in pending else source_coeffs
    lower = torch.where(torch.isnan(total.lower), -torch.inf, total.lower)
    return LinearBound(lower, torch.where(torch.isnan(total.magnitude), torch.inf, total.magnitude))


def nodes_to_refine(network: Network) -> set[int]:
    """Nodes whose interval a relaxation uses and where CROWN can improve on IBP.

    Skipped: outputs of relaxed operators (the sweep would cross their own relaxation, which
    is no tighter than IBP of their refined inputs) and linear images of the input box, where
    IBP's centre/radius form is already exact.
    """
    is_box = [True] + [False] * (len(network.nodes) - 1)
    exact = [True] + [False] * (len(network.nodes) - 1)
    for index, node in enumerate(network.nodes[1:], start=1):
        rule = network.rules[node.rule]
        single_box_input = len(node.inputs) == 1 and is_box[node.inputs[0]]
        is_box[index] = single_box_input and rule.preserves_box
        exact[index] = single_box_input and not rule.needs_bounds and rule.has_linear_rule
    pending: list[int] = []
    for node in network.nodes[1:]:
        if network.rules[node.rule].needs_bounds:
            pending.extend(node.inputs)
    needed: set[int] = set()
    seen: set[int] = set()
    while pending:  # refine before selections: their intervals follow exactly from their input's
        index = pending.pop()
        if index in seen or index == 0:
            continue
        seen.add(index)
        if network.rule(index).selects_only:
            pending.extend(network.nodes[index].inputs)
        else:
            needed.add(index)
    return {i for i in needed if not exact[i] and not network.rule(i).needs_bounds}


def _tighter_input_helps(network: Network, index: int) -> bool:
    """Whether every relaxation that reads node `index`'s interval (through selections) gains
    from a tighter one (`Rule.tighter_input_helps`)."""
    for consumer in network.consumers[index]:
        rule = network.rule(consumer)
        if rule.selects_only:
            if not _tighter_input_helps(network, consumer):
                return False
        elif rule.needs_bounds and not rule.tighter_input_helps:
            return False
    return True


def relevant_neurons(network: Network, index: int, bounds: Interval) -> Tensor | None:
    """[B, *shape] bool: neurons of node `index` whose tighter bounds some relaxation would use
    (None: none), given the node's current bounds. Found through selections by moving their
    consumers' masks back with the selection's own backward rule."""
    result = None
    for consumer in network.consumers[index]:
        rule = network.rule(consumer)
        if rule.selects_only:
            mask = relevant_neurons(network, consumer, rule.ibp(bounds))
            if mask is None:
                continue
            moved = rule.backward(mask.to(bounds.lower.dtype).unsqueeze(1)).inputs[0].squeeze(1)
            mask = moved != 0
        elif rule.needs_bounds:
            mask = rule.relevant(bounds)
            if mask is None:
                mask = torch.ones_like(bounds.lower, dtype=torch.bool)
        else:
            continue
        result = mask if result is None else result | mask
    return result


def crown_bounds(network: Network, box: Interval, alphas: AlphaStore | None = None,
                 reference: list[Interval | None] | None = None, refine: bool = True,
                 errors: Errors | None = None, time_left: Callable[[], float] | None = None) -> list[Interval | None]:
    """Intervals for every node: IBP from the bounds so far, and CROWN on the neurons that a
    relaxation needs and IBP leaves unstable (as the published algorithm's sparse mode does).

    For alpha-CROWN, `alphas` holds the free relaxation parameters of every sweep (the refined
    neurons are fixed at the first call) and `reference` the best intervals found so far, which
    tighten the new ones (their gradient still flows through the new ones). With `refine` False no
    node is refined: IBP through the reference intervals. The nodes' rounding errors go into
    `errors` when given, for later sweeps over the same intervals. Raises OutOfTime when
    `time_left()` is spent (checked between sweeps and inside them).
    """
    needed = nodes_to_refine(network) if refine else set()
    first_layers = ball_layers(network) if isinstance(box, Ball) else set()
    bounds: list[Interval | None] = [box]
    errors = {} if errors is None else errors
    for index in range(1, len(network.nodes)):
        current = node_interval(network, index, bounds, errors)
        best = reference[index] if reference is not None else None
        if index in needed or index in first_layers:
            current = _refine(network, index, current, bounds, alphas, errors, time_left,
                              every_neuron=index in first_layers, known=best)
        if best is not None:
            current = Interval(_tighten(current.lower, best.lower, torch.gt),
                               _tighten(current.upper, best.upper, torch.lt))
        bounds.append(current)
    return bounds


def _tighten(value: Tensor, best: Tensor, better: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """`best` where it is better, shifted onto `value` so that the gradient still flows through
    `value`; an infinite `value` cannot carry the shift (inf - inf is NaN) and gives `best` itself.
    `better` is torch.gt for lower bounds and torch.lt for upper ones."""
    if not value.requires_grad:
        return torch.where(better(best, value), best, value)
    shifted = torch.where(torch.isfinite(value), value + (best - value).detach(), best)
    # the shift rounds (by an ulp of `value`, 1 on values of 1e16): never past `best`, which would
    # narrow a sound bound
    past = shifted > best if better is torch.gt else shifted < best
    shifted = torch.where(past, best, shifted)
    return torch.where(better(best, value), shifted, value)


def _refine(network: Network, index: int, current: Interval, bounds: list[Interval | None],
            alphas: AlphaStore | None = None, errors: Errors | None = None,
            time_left: Callable[[], float] | None = None, every_neuron: bool = False,
            known: Interval | None = None) -> Interval:
    """Tighten `current` (bounds of node `index`) with CROWN on the neurons its consumers care
    about, or on all of them. Neurons that `known` (sound bounds found otherwise, such as forward
    mode's) already makes stable are not refined."""
    batch = current.lower.shape[0]
    if every_neuron:
        positions = torch.arange(current.lower[0].numel(), device=current.lower.device)
    elif alphas is not None and index in alphas.positions:
        positions = alphas.positions[index]
    else:
        narrowed = current if known is None else current.intersect(known)
        relevant = relevant_neurons(network, index, narrowed)
        if relevant is not None:
            # dead neurons, exactly 0, widened by the underflow terms of the rounding bounds: no
            # sweep can narrow them (it adds the same terms), their relaxation costs nothing, and
            # refining thousands of them took minutes on nn4sys
            noise = torch.finfo(current.lower.dtype).smallest_normal * 2.0 ** 20
            relevant = relevant & (narrowed.upper - narrowed.lower > noise)
        positions = (relevant.reshape(batch, -1).any(0).nonzero().flatten() if relevant is not None
                     else torch.zeros(0, dtype=torch.long, device=current.lower.device))
        if alphas is not None:
            alphas.positions[index] = positions
    if positions.numel() == 0:
        return current
    shape = network.nodes[index].shape
    numel = current.lower[0].numel()
    widest = max(math.prod(network.nodes[i].shape) for i in network.ancestors(index))
    chunk = max(1, COEFF_BUDGET // (2 * batch * max(widest, numel)))
    lower = current.lower.reshape(batch, -1).clone()
    upper = current.upper.reshape(batch, -1).clone()
    windowed = network.rule(index).accepts_patches and len(shape) in (3, 4) and shape[-1] * shape[-2] > 1
    # keep IBP's bound where it is tighter, unless a consumer's relaxation could loosen on it: on
    # the sigmoid network eran 6x200, CROWN alone was wider than IBP from the fifth layer on
    intersect = _tighter_input_helps(network, index)
    last_chunk = 0.0
    for begin in range(0, positions.numel(), chunk):
        check_time(time_left, last_chunk)
        started = time.perf_counter()
        part = positions[begin:begin + chunk]
        rows = part.numel()
        if windowed:  # rows of a feature map touch only their receptive fields: start with windows
            signs = torch.cat([torch.ones(rows), -torch.ones(rows)]).to(part.device)
            coeffs = identity_patches(torch.cat([part, part]), signs, batch, shape, current.lower.dtype)
        else:
            coeffs = current.lower.new_zeros(batch, 2 * rows, numel)
            span = torch.arange(rows, device=part.device)
            coeffs[:, span, part] = 1.0
            coeffs[:, rows + span, part] = -1.0
            coeffs = coeffs.reshape(batch, 2 * rows, *shape)
        bound = backward_bound(network, index, coeffs, bounds, alphas, (index, begin), errors=errors,
                               time_left=time_left)
        # the sweep's own rounding, sized by the terms it summed, keeps the bounds sound
        error = rounding(bound.lower.dtype, SWEEP_TERMS) * bound.magnitude
        safe = torch.where(torch.isinf(bound.lower), bound.lower, bound.lower - error)
        if intersect:
            lower[:, part] = torch.maximum(lower[:, part], safe[:, :rows])
            upper[:, part] = torch.minimum(upper[:, part], -safe[:, rows:])
        else:
            lower[:, part] = safe[:, :rows]
            upper[:, part] = -safe[:, rows:]
        last_chunk = time.perf_counter() - started
    return Interval(lower.reshape(current.lower.shape), upper.reshape(current.upper.shape))
