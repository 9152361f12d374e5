"""alpha-CROWN: the free relaxation parameters optimised by gradient ascent on the bound.

Every parameter value inside its range gives sound lines (each rule guarantees it), so the bound
is sound whatever the optimiser does; only its tightness depends on the search. Parameters are
separate per output row and per intermediate sweep, optimised jointly with Adam, projected back
into their ranges after each step; the best bound of every row and the best interval of every
intermediate node seen in any iteration are kept. No operator is named here.

A search that cannot move says so on the module's logger (INFO, shown by `verify -v`): when no
parameter receives a gradient (the bound stays CROWN's) or when its iterations improve no row
over the first one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.bounds.core import Interval
from verifier.bounds.engine import Errors, LinearBound, OutOfTime, backward_bound, crown_bounds
from verifier.bounds.intermediate import intermediate_bounds, resolve
from verifier.bounds.network import Network
from verifier.bounds.patches import Patches
from verifier.bounds.relaxation import AlphaStore
from verifier.settings import AlphaSettings

logger = logging.getLogger(__name__)

# Resident memory of an optimisation iteration per byte of intermediate parameters: measured
# 14x on resnet_4b (322 MiB of parameters, 5.6 GiB peak) and nn4sys normal_1000 (1.1 GiB, 17 GiB),
# 22x on mnist_relu_9_200 (9 MiB); the gradients, Adam's moments and the sweeps' saved
# coefficients are each about the size of the parameters.
MEMORY_PER_PARAMETER_BYTE = 16
# An iteration that optimises the intermediate bounds' parameters costs about this many CROWN
# passes (measured 1.3x on nn4sys piecewise_100: 6.4 s against 4.9 s), and their iterations may
# take at most STAGE_SHARE of the time left; where they would not fit, only the final sweep's
# parameters are optimised. On that model, five intermediate iterations in 32 s proved none of
# five boxes; eleven final-sweep iterations in 5.7 s proved all five.
INTERMEDIATE_ITERATION_COST = 1.5
STAGE_SHARE = 0.5


@dataclass
class OptimizedBound:
    bound: LinearBound                 # best lower bound of every row [B, m]
    intermediate: list[Interval | None]  # best interval of every node
    iterations: int
    alphas: AlphaStore                 # the parameters as the last iteration left them


def optimize_bounds(network: Network, box: Interval, coeffs: Tensor | Patches, settings: AlphaSettings,
                    time_left: Callable[[], float] | None = None,
                    done: Callable[[LinearBound], bool] | None = None, intermediate: str = "auto") -> OptimizedBound:
    """Optimise the lower bounds of the rows `coeffs` [B, m, *output_shape] over the boxes.

    `done(best)` ends the search early (every row the caller needs is proved). OutOfTime is
    raised when `time_left()` runs out before the first iteration is done (a later sweep cut
    short leaves the best bound so far); a later iteration starts only while it exceeds about three
    forward sweeps (a backward pass and the next sweep), so that the search ends before the limit
    rather than one iteration after it.
    """
    alphas, crown = _start(network, box, settings, time_left, resolve(intermediate, box))
    fixed = None if alphas.parameters() else crown
    fixed_errors: Errors = {}  # the rounding bounds of the fixed intervals, found in the first sweep
    reference = crown  # best intervals so far; updated only while the intermediate bounds move
    best: LinearBound | None = None
    optimizer = None
    first: LinearBound | None = None
    stalled, iteration, gained = 0, 0, False
    for iteration in range(1, settings.iterations + 1):
        started = time.perf_counter()
        with torch.enable_grad():
            if fixed is None:
                errors = {}
                try:
                    bounds = crown_bounds(network, box, alphas, reference, errors=errors, time_left=time_left)
                except OutOfTime:
                    if best is None:
                        raise
                    break  # the best bound so far stands
            else:
                bounds, errors = fixed, fixed_errors
            final = backward_bound(network, network.output, coeffs, bounds, alphas, "final", errors=errors)
        improved = best is None or bool((final.lower.detach() > best.lower + 1e-4 * (1 + best.lower.abs())).any())
        gained = gained or (improved and best is not None)
        best = keep_best(best, final)
        first = best if iteration == 1 else first
        if fixed is None:
            reference = _tighter(reference, bounds)
        stalled = 0 if improved else stalled + 1
        # this iteration's backward pass and the next forward sweep cost about three forward sweeps
        out_of_time = time_left is not None and time_left() <= 3 * (time.perf_counter() - started)
        if (done is not None and done(best)) or stalled >= settings.patience or out_of_time \
                or iteration == settings.iterations:
            break
        if optimizer is None:
            parameters = alphas.parameters()
            if not parameters:
                logger.info("alpha-CROWN: no relaxation has free parameters; the bound is CROWN's")
                break
            optimizer = Adam(parameters, settings.learning_rate, settings.decay)
        with torch.enable_grad():  # callers may hold a no_grad context
            loss = -final.lower[torch.isfinite(final.lower)].sum()
            if loss.requires_grad:
                loss.backward()
        if optimizer.steps == 0 and not _any_gradient(optimizer.parameters):
            # nothing can move, so every later iteration would repeat this one
            logger.info("alpha-CROWN: none of %d parameter tensors received a gradient; the bound stays "
                        "CROWN's (every relaxation exact, or autograd gives no subgradient where the "
                        "parameters start)", len(optimizer.parameters))
            _clear_gradients(optimizer.parameters)
            break
        optimizer.step()
        alphas.project()
    if iteration > 1 and not gained:
        logger.info("alpha-CROWN: %d iterations improved no bound row over CROWN's (%s)", iteration,
                    "patience ran out" if stalled >= settings.patience else "stopped early")
    elif iteration > 1 and logger.isEnabledFor(logging.INFO):  # the gain costs a host sync
        logger.info("alpha-CROWN: %d iterations, mean lower-bound gain %.4g over the first", iteration,
                    _mean_gain(first, best))
    return OptimizedBound(best, reference, iteration, alphas)


def _any_gradient(parameters: list[Tensor]) -> bool:
    """Whether any parameter holds a non-zero finite gradient (one host sync)."""
    sums = [torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0).abs().sum()
            for p in parameters if p.grad is not None]
    return bool(sums) and bool(torch.stack(sums).sum() > 0)


def _mean_gain(first: LinearBound, best: LinearBound) -> float:
    finite = torch.isfinite(first.lower) & torch.isfinite(best.lower)
    return float((best.lower - first.lower)[finite].mean()) if bool(finite.any()) else 0.0


def _clear_gradients(parameters: list[Tensor]) -> None:
    for p in parameters:
        p.grad = None


def _start(network: Network, box: Interval, settings: AlphaSettings, time_left: Callable[[], float] | None = None,
           intermediate: str = "backward") -> tuple[AlphaStore, list[Interval | None]]:
    """CROWN's intermediate bounds (by the resolved `intermediate` method), and the store with the
    intermediate sweeps' parameters when they are to be optimised, fit
    `settings.intermediate_memory_mb` and (by the time this CROWN pass took) the time left (else an
    empty store)."""
    with torch.no_grad():
        if not settings.intermediate:
            return AlphaStore(), intermediate_bounds(network, box, intermediate, time_left=time_left)
        # parameters beyond the memory budget would be dropped: the store stops making them there
        alphas = AlphaStore(capacity=settings.intermediate_memory_mb * 2**20 / MEMORY_PER_PARAMETER_BYTE)
        started = time.perf_counter()
        # the parameters at their CROWN values
        crown = intermediate_bounds(network, box, intermediate, alphas, time_left=time_left)
        seconds = time.perf_counter() - started
    if alphas.full:
        return AlphaStore(), crown
    needed = INTERMEDIATE_ITERATION_COST * settings.iterations * seconds
    if alphas.parameters() and time_left is not None and needed > STAGE_SHARE * time_left():
        logger.info("alpha-CROWN: %d intermediate iterations would take about %.1fs of %.1fs left; "
                    "only the final sweep is optimised", settings.iterations, needed, time_left())
        return AlphaStore(), crown
    return alphas, crown


def intermediate_fits(network: Network, box: Interval, settings: AlphaSettings, intermediate: str = "auto") -> bool:
    """Whether `optimize_bounds` would optimise the intermediate bounds (one CROWN pass)."""
    return bool(_start(network, box, settings, None, resolve(intermediate, box))[0].parameters())


class Adam:
    """Adam (Kingma and Ba) with its learning rate multiplied by `decay` after every step.

    Written out because the first torch.optim optimiser of a process costs about a second of
    imports, which a verifier that runs one instance per process pays every time.
    """

    def __init__(self, parameters: list[Tensor], learning_rate: float, decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.parameters, self.learning_rate, self.decay = parameters, learning_rate, decay
        self.betas, self.eps, self.steps = betas, eps, 0
        self.first = [torch.zeros_like(p) for p in parameters]
        self.second = [torch.zeros_like(p) for p in parameters]

    @torch.no_grad()
    def step(self) -> None:
        """One update from the gradients in `.grad`, which are then cleared."""
        self.steps += 1
        beta1, beta2 = self.betas
        first_scale = 1 - beta1 ** self.steps
        second_scale = 1 - beta2 ** self.steps
        for parameter, first, second in zip(self.parameters, self.first, self.second):
            if parameter.grad is None:
                continue
            # one NaN gradient would otherwise leave the parameter NaN for every later step
            grad = torch.nan_to_num(parameter.grad, nan=0.0, posinf=0.0, neginf=0.0)
            first.mul_(beta1).add_(grad, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (second / second_scale).sqrt_().add_(self.eps)
            parameter.addcdiv_(first, denominator, value=-self.learning_rate / first_scale)
            parameter.grad = None
        self.learning_rate *= self.decay


def keep_best(best: LinearBound | None, new: LinearBound) -> LinearBound:
    """Row by row, the larger of two lower bounds (detached)."""
    lower, magnitude = new.lower.detach(), new.magnitude.detach()
    if best is None:
        return LinearBound(lower, magnitude)
    better = lower > best.lower
    return LinearBound(torch.where(better, lower, best.lower), torch.where(better, magnitude, best.magnitude))


def _tighter(reference: list[Interval | None], bounds: list[Interval | None]) -> list[Interval | None]:
    detached = [None if b is None else Interval(b.lower.detach(), b.upper.detach()) for b in bounds]
    # fmax/fmin: a NaN of one iteration must not erase the best bound so far
    return [b if r is None else Interval(torch.fmax(r.lower, b.lower), torch.fmin(r.upper, b.upper))
            for r, b in zip(reference, detached)]
