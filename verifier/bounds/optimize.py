"""alpha-CROWN: the free relaxation parameters optimised by gradient ascent on the bound.

Every parameter value inside its range gives sound lines (each rule guarantees it), so the bound
is sound whatever the optimiser does; only its tightness depends on the search. Parameters are
separate per output row and per intermediate sweep, optimised jointly with Adam, projected back
into their ranges after each step; the best bound of every row and the best interval of every
intermediate node seen in any iteration are kept. No operator is named here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.bounds.core import Interval
from verifier.bounds.engine import LinearBound, backward_bound, crown_bounds
from verifier.bounds.network import Network
from verifier.bounds.patches import Patches
from verifier.bounds.relaxation import AlphaStore


@dataclass(frozen=True)
class AlphaSettings:
    """How to optimise: iterations, Adam's learning rate and its decay per iteration, whether the
    intermediate sweeps' parameters are optimised too, and how many iterations without a 1e-4
    relative improvement end the search early."""

    iterations: int = 20
    learning_rate: float = 0.1
    decay: float = 0.98
    intermediate: bool = True
    patience: int = 6


@dataclass
class OptimizedBound:
    bound: LinearBound                 # best lower bound of every row [B, m]
    intermediate: list[Interval | None]  # best interval of every node
    iterations: int
    optimized_intermediate: bool


def optimize_bounds(network: Network, box: Interval, coeffs: Tensor | Patches, settings: AlphaSettings,
                    time_left: Callable[[], float] | None = None,
                    done: Callable[[LinearBound], bool] | None = None) -> OptimizedBound:
    """Optimise the lower bounds of the rows `coeffs` [B, m, *output_shape] over the boxes.

    `done(best)` ends the search early (every row the caller needs is proved); the time
    limit is checked before each iteration (the first one always runs).
    """
    alphas = AlphaStore()
    fixed = None
    if not settings.intermediate:
        with torch.no_grad():
            fixed = crown_bounds(network, box)
    best: LinearBound | None = None
    reference: list[Interval | None] | None = None
    optimizer = scheduler = None
    stalled, iteration = 0, 0
    for iteration in range(1, settings.iterations + 1):
        with torch.enable_grad():
            bounds = crown_bounds(network, box, alphas, reference) if fixed is None else fixed
            final = backward_bound(network, network.output, coeffs, bounds, alphas, "final")
        improved = best is None or bool((final.lower.detach() > best.lower + 1e-4 * (1 + best.lower.abs())).any())
        best = _keep_best(best, final)
        if fixed is None:
            reference = _tighter(reference, bounds)
        stalled = 0 if improved else stalled + 1
        out_of_time = time_left is not None and time_left() <= 0
        if (done is not None and done(best)) or stalled >= settings.patience or out_of_time \
                or iteration == settings.iterations:
            break
        if optimizer is None:
            parameters = alphas.parameters()
            if not parameters:
                break  # nothing to optimise: the bound is CROWN's
            optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate)
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, settings.decay)
        with torch.enable_grad():  # callers may hold a no_grad context
            loss = -final.lower[torch.isfinite(final.lower)].sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        scheduler.step()
        alphas.project()
    intermediate = reference if reference is not None else (fixed or [])
    return OptimizedBound(best, intermediate, iteration, fixed is None)


def _keep_best(best: LinearBound | None, new: LinearBound) -> LinearBound:
    lower, magnitude = new.lower.detach(), new.magnitude.detach()
    if best is None:
        return LinearBound(lower, magnitude)
    better = lower > best.lower
    return LinearBound(torch.where(better, lower, best.lower), torch.where(better, magnitude, best.magnitude))


def _tighter(reference: list[Interval | None] | None, bounds: list[Interval | None]) -> list[Interval | None]:
    detached = [None if b is None else Interval(b.lower.detach(), b.upper.detach()) for b in bounds]
    if reference is None:
        return detached
    # fmax/fmin: a NaN of one iteration must not erase the best bound so far
    return [b if r is None else Interval(torch.fmax(r.lower, b.lower), torch.fmin(r.upper, b.upper))
            for r, b in zip(reference, detached)]
