"""`verify bounds`: bounds of every raw network output over each input box of a property."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.bounds.core import SWEEP_TERMS, Interval, lp_ball, rounding
from verifier.bounds.engine import (
    Errors,
    LinearBound,
    backward_bound,
    crown_bounds,
    interval_bounds,
    interval_concretize,
)
from verifier.bounds.forward import forward_bounds, rows_bound
from verifier.bounds.network import Network
from verifier.bounds.optimize import optimize_bounds
from verifier.errors import UserError
from verifier.instance import open_instance
from verifier.settings import OUTPUT_METHODS, AlphaSettings


def output_bounds(model_path: str, property_path: str, method: str, device: str = "cpu", eps: float | None = None,
                  norm: float = math.inf) -> dict:
    """`{"method", "seconds", "unbounded", "cases": [{"input_lower", "input_upper", "lower", "upper"}]}`,
    all flat; `unbounded` names the operators without a rule, whose values are bounded by (-inf, inf).

    With `eps`, each box is replaced by the Lp ball (`norm` inf, 2 or 1) of that radius around
    its centre; `input_lower` and `input_upper` are then the ball's bounding box."""
    instance = open_instance(model_path, property_path, device)
    if instance.network is None:
        raise UserError(property_path, "the property's constraints cannot hold together: no input box to bound")
    network, spec = instance.network, instance.spec
    region = spec.box if eps is None else lp_ball(spec.box.center, eps, norm)
    start = time.perf_counter()
    with torch.no_grad():
        lower, upper = raw_output_bounds(network, region, method)
    seconds = time.perf_counter() - start
    cases = []
    for b in range(spec.cases):
        cases.append({
            "input_lower": region.lower[b].reshape(-1).double().tolist(),
            "input_upper": region.upper[b].reshape(-1).double().tolist(),
            "lower": lower[b].double().tolist(),
            "upper": upper[b].double().tolist(),
        })
    return {"method": method, "seconds": seconds, "unbounded": network.unbounded, "cases": cases}


@dataclass
class OutputBounds:
    lower: Tensor | None                   # [B, rows]; None where not asked for
    upper: Tensor | None                   # [B, rows]
    intermediate: list[Interval | None]    # every node's interval in the pass


def raw_output_bounds(network: Network, box: Interval, method: str, alpha: AlphaSettings | None = None,
                      spec: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds [B, rows] of `spec @ flattened output`: see `bound_outputs`."""
    result = bound_outputs(network, box, method, alpha, spec)
    return result.lower, result.upper


def bound_outputs(network: Network, box: Interval, method: str, alpha: AlphaSettings | None = None,
                  spec: Tensor | None = None, sides: tuple[bool, bool] = (True, True)) -> OutputBounds:
    """Lower and upper bounds [B, rows] of `spec @ flattened output` over the input regions `box`
    [B, *input_shape] (boxes or balls), sound in floating point: each is moved outwards by the
    rounding its sweep may have made.

    `spec` [B, rows, outputs] defaults to the identity (every output). `sides` says which of the
    lower and upper bounds to compute (a side costs a backward row per spec row). `method` is
    "ibp", "crown", "crown-ibp" (IBP intermediate bounds, CROWN at the output), "forward"
    (forward-mode linear bounds of every node, see bounds/forward.py) or "alpha-crown"
    (configured by `alpha`, default AlphaSettings()). Differentiable with respect to the region
    and to the parameters the network's rules hold, except alpha-CROWN's, whose search runs
    without gradients (see verifier.api for a differentiable alpha-CROWN bound).
    """
    cases = box.lower.shape[0]
    if method == "ibp":
        bounds = interval_bounds(network, box)
        out = bounds[network.output]
        lower, upper = _spec_interval(spec, Interval(out.lower.reshape(cases, -1), out.upper.reshape(cases, -1)))
        return OutputBounds(lower if sides[0] else None, upper if sides[1] else None, bounds)
    coeffs = output_rows(network, cases, spec, sides)
    if method == "forward":
        passed = forward_bounds(network, box)
        bounds, bound = passed.intervals, rows_bound(coeffs, passed.forms[network.output], box)
    elif method == "alpha-crown":  # each output's lower and upper bound is its own row
        # the intermediate bounds of the `crown` method, so that the two compare
        result = optimize_bounds(network, box, coeffs, alpha or AlphaSettings(), intermediate="backward")
        bounds, bound = result.intermediate, result.bound
    elif method in ("crown", "crown-ibp"):
        errors: Errors = {}
        bounds = crown_bounds(network, box, errors=errors, refine=method == "crown")
        bound = backward_bound(network, network.output, coeffs, bounds, errors=errors)
    else:
        raise ValueError(f"method '{method}': expected one of {', '.join(OUTPUT_METHODS)}")
    return combined_bounds(network, box, bounds, bound, spec, sides)


def output_rows(network: Network, cases: int, spec: Tensor | None, sides: tuple[bool, bool]) -> Tensor:
    """The backward rows [B, rows, *output_shape] whose lower bounds give the asked sides:
    `spec` for the lower bounds, then `-spec` for the upper ones."""
    count = math.prod(network.output_shape)
    if spec is None:
        spec = torch.eye(count, dtype=network.dtype, device=network.device).expand(cases, count, count)
    signed = [sign * spec for sign, wanted in zip((1.0, -1.0), sides) if wanted]
    if not signed:
        raise ValueError("sides: ask for the lower bounds, the upper bounds or both")
    rows = torch.cat(signed, dim=1)
    return rows.reshape(cases, rows.shape[1], *network.output_shape)


def combined_bounds(network: Network, box: Interval, bounds: list[Interval | None], bound: LinearBound,
                    spec: Tensor | None, sides: tuple[bool, bool] = (True, True)) -> OutputBounds:
    """The asked sides of the rows' bounds from the linear bound of `output_rows`, made sound in
    floating point and intersected with the output interval (CROWN is not monotone in its
    intermediate bounds, so IBP's final interval can be tighter)."""
    cases = box.lower.shape[0]
    safe = bound.lower - rounding(bound.lower.dtype, SWEEP_TERMS) * bound.magnitude
    out = bounds[network.output].intersect(interval_bounds(network, box)[network.output])
    lower, upper = _spec_interval(spec, Interval(out.lower.reshape(cases, -1), out.upper.reshape(cases, -1)))
    rows = lower.shape[1]
    lower = torch.maximum(safe[:, :rows], lower) if sides[0] else None
    upper = torch.minimum(-safe[:, -rows:], upper) if sides[1] else None
    return OutputBounds(lower, upper, bounds)


def _spec_interval(spec: Tensor | None, out: Interval) -> tuple[Tensor, Tensor]:
    """Bounds [B, rows] of spec @ z for z in the flat interval `out` [B, outputs], sound in
    floating point (no spec: `out` itself)."""
    if spec is None:
        return out.lower, out.upper
    lower = interval_concretize(spec, out)
    upper = interval_concretize(-spec, out)
    margin = rounding(out.lower.dtype, spec.shape[-1])
    return lower.lower - margin * lower.magnitude, -upper.lower + margin * upper.magnitude
