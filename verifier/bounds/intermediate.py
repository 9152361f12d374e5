"""The intermediate bounds of a CROWN pass: backward sweeps, forward-mode forms, or both.

Backward sweeps (engine.crown_bounds) cost a sweep from each neuron that a relaxation needs back
to the input; forward mode (verifier.bounds.forward) costs one sweep that carries a coefficient
per input. With few inputs forward mode is far cheaper, and its intervals, intersected with IBP's
at every node, make many neurons stable, so that the backward sweeps that follow it ("both")
refine only the rest. Measured (`benchmarks/intermediate.py`): on the cGAN models (5 inputs,
165k-199k neurons) "both" took 8-15 s where backward sweeps alone took 62-92 s, and was as tight;
on nn4sys normal_1000 (1 input, 58k neurons, a box 3e4 wide) forward mode took 0.7 s and gave a
bound 100x tighter than backward sweeps, which took 11 s for the root and over 10 minutes for 64
sub-boxes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from verifier.bounds.core import Interval
from verifier.bounds.engine import Errors, OutOfTime, crown_bounds
from verifier.bounds.forward import forward_bounds
from verifier.bounds.network import Network
from verifier.bounds.relaxation import AlphaStore

# Forward forms hold one coefficient per input and neuron: up to this many inputs they cost a
# few IBP passes (ACAS Xu 5, cGAN 5, nn4sys 1); image inputs (784, 3072) make them cost more than
# the backward sweeps they would save (mnistfc 256x6: 0.09 s against 0.05 s, and 4x looser).
FORWARD_INPUTS = 64


# Input splitting bounds many sub-boxes the same way: where the backward sweeps of `both` took
# more than this many times its forward pass (in the bound pass on the whole box, or else on the
# first sub-boxes, where they are cut off there), the sub-boxes get the forward pass alone.
# Measured on the whole box: ACAS Xu 0.9x (the sweeps pay: bounds 2-15x tighter than forward's
# on its halves), the two-input lattice networks of tllverifybench 1.2x (N=M=16), 5.0-5.6x
# (N=M=24: 73 sub-boxes to a proof with the sweeps, over 11,000 and no proof in 50 s without)
# and 11x (N=M=32), nn4sys normal_1000 17x (the sweeps gave the same bound) and a cGAN 84x.
SWEEPS_WORTH = 8.0


def sweeps_over_forward(seconds: dict[str, float]) -> float | None:
    """The backward sweeps' time over the forward pass's, from the `seconds` of a `both` pass
    (None where the pass had not both parts)."""
    if "forward" not in seconds or "backward" not in seconds:
        return None
    return seconds["backward"] / max(seconds["forward"], 1e-9)


def resolve(mode: str, box: Interval) -> str:
    """The method `mode` names for this input region: `auto` is `both` with at most
    FORWARD_INPUTS inputs, and `backward` otherwise."""
    if mode != "auto":
        return mode
    return "both" if box.lower[0].numel() <= FORWARD_INPUTS else "backward"


def intermediate_bounds(network: Network, box: Interval, mode: str, alphas: AlphaStore | None = None,
                        errors: Errors | None = None, time_left: Callable[[], float] | None = None,
                        seconds: dict[str, float] | None = None,
                        sweeps_within: float | None = None) -> list[Interval | None]:
    """Every node's interval over `box` [B, *input_shape] by the resolved `mode` (backward,
    forward or both); see engine.crown_bounds for `alphas`, `errors` and OutOfTime. In `both`,
    backward sweeps cut short by `time_left`, or after `sweeps_within` times the forward pass's
    seconds, leave the forward intervals. `seconds`, when given, gets the time of the forward
    pass ("forward") and of the backward sweeps ("backward")."""
    errors = {} if errors is None else errors
    seconds = {} if seconds is None else seconds
    started = time.perf_counter()
    if mode == "backward":
        bounds = crown_bounds(network, box, alphas, errors=errors, time_left=time_left)
        seconds["backward"] = time.perf_counter() - started
        return bounds
    forward = forward_bounds(network, box, time_left, keep_forms=False).intervals
    seconds["forward"] = time.perf_counter() - started
    if mode == "both":
        sweeps_left = time_left if sweeps_within is None else _sooner(time_left, sweeps_within * seconds["forward"])
        try:
            return crown_bounds(network, box, alphas, reference=forward, errors=errors, time_left=sweeps_left)
        except OutOfTime:
            errors.clear()  # they were found over the interrupted pass's intervals
            if alphas is not None:
                alphas.clear()
        finally:
            seconds["backward"] = time.perf_counter() - started - seconds["forward"]
    elif mode != "forward":
        raise ValueError(f"intermediate bounds '{mode}': expected backward, forward or both")
    return crown_bounds(network, box, reference=forward, refine=False, errors=errors)


def _sooner(time_left: Callable[[], float] | None, seconds: float) -> Callable[[], float]:
    """A time_left that ends `seconds` from now, or with `time_left` where that is sooner."""
    stop = time.perf_counter() + seconds
    return lambda: min(stop - time.perf_counter(), time_left() if time_left is not None else float("inf"))
