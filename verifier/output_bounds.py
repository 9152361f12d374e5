"""`verify bounds`: bounds of every raw network output over each input box of a property."""

from __future__ import annotations

import math
import time

import torch

from verifier.bounds.core import Interval
from verifier.bounds.engine import Errors, backward_bound, crown_bounds, interval_bounds
from verifier.bounds.network import Network
from verifier.bounds.optimize import optimize_bounds
from verifier.errors import UserError
from verifier.instance import open_instance
from verifier.settings import AlphaSettings


def output_bounds(model_path: str, property_path: str, method: str, device: str = "cpu") -> dict:
    """`{"method", "seconds", "cases": [{"input_lower", "input_upper", "lower", "upper"}]}`, all flat."""
    instance = open_instance(model_path, property_path, device)
    if instance.network is None:
        raise UserError(property_path, "the property's constraints cannot hold together: no input box to bound")
    network, spec = instance.network, instance.spec
    start = time.perf_counter()
    with torch.no_grad():
        lower, upper = raw_output_bounds(network, spec.box, method)
    seconds = time.perf_counter() - start
    cases = []
    for b in range(spec.cases):
        cases.append({
            "input_lower": spec.box.lower[b].reshape(-1).double().tolist(),
            "input_upper": spec.box.upper[b].reshape(-1).double().tolist(),
            "lower": lower[b].double().tolist(),
            "upper": upper[b].double().tolist(),
        })
    return {"method": method, "seconds": seconds, "cases": cases}


def raw_output_bounds(network: Network, box: Interval, method: str,
                      alpha: AlphaSettings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds [B, n_out] of the flattened outputs over the boxes [B, *input_shape].

    `alpha` configures alpha-CROWN (default: AlphaSettings()).
    """
    cases = box.lower.shape[0]
    if method == "ibp":
        out = interval_bounds(network, box)[network.output]
        return out.lower.reshape(cases, -1), out.upper.reshape(cases, -1)
    count = math.prod(network.output_shape)
    eye = torch.eye(count, dtype=network.dtype, device=network.device)
    coeffs = torch.cat([eye, -eye]).unsqueeze(0).expand(cases, -1, -1)
    coeffs = coeffs.reshape(cases, 2 * count, *network.output_shape)
    if method == "alpha-crown":  # each output's lower and upper bound is its own row
        result = optimize_bounds(network, box, coeffs, alpha or AlphaSettings())
        bounds, bound = result.intermediate, result.bound.lower
    else:
        errors: Errors = {}
        bounds = crown_bounds(network, box, errors=errors)
        bound = backward_bound(network, network.output, coeffs, bounds, errors=errors).lower
    # CROWN is not monotone in its intermediate bounds: keep the final IBP interval where tighter
    out = bounds[network.output].intersect(interval_bounds(network, box)[network.output])
    lower = torch.maximum(bound[:, :count], out.lower.reshape(cases, -1))
    upper = torch.minimum(-bound[:, count:], out.upper.reshape(cases, -1))
    return lower, upper
