"""Does the bound network model what onnxruntime computes? A check before any proof.

At a few points of each input box (its centre, corners, random points), onnxruntime runs the
original model, and the network's interval bounds of the single point, rounding of the deployed
model included, must contain each output; where onnxruntime gives inf or NaN the bound must be
unbounded on that side. A model that fails (a converter that changed its meaning, an operator
that onnxruntime computes otherwise) gets no proof: the verifier only attacks it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from verifier.bounds.core import Interval
from verifier.bounds.engine import interval_bounds
from verifier.bounds.network import Network
from verifier.spec import Spec, round_inward
from verifier.witness import OnnxChecker

POINTS_PER_BOX = 6
BOXES_CHECKED = 4
# onnxruntime runs of the largest float64 models take 0.1 s each: past the first box's points,
# the check takes what this many seconds allow
CHECK_SECONDS = 0.5


def sample_points(spec: Spec, np_dtype, seed: int = 0) -> np.ndarray:
    """[N, n_in] points of the model dtype inside the boxes: centres, two corners, random points."""
    rng = np.random.default_rng(seed)
    points = []
    for case in spec.prop.cases[:BOXES_CHECKED]:
        low, high = round_inward(case.lower, case.upper, np_dtype)
        high = np.maximum(low, high)  # a box narrower than the float spacing: its lower corner
        corners = [np.where(rng.random(low.shape) < 0.5, low, high) for _ in range(2)]
        inside = [low + rng.random(low.shape) * (high - low) for _ in range(POINTS_PER_BOX - 3)]
        for point in [(low + high) / 2, *corners, *inside]:
            if np.all(np.isfinite(point)):
                points.append(np.clip(point.astype(np_dtype), low, high))
    return np.stack(points)


def disagreement(network: Network, spec: Spec, checker: OnnxChecker, seed: int = 0) -> str | None:
    """None when every sampled onnxruntime output lies in the network's bounds; else what differs."""
    points = sample_points(spec, checker.np_dtype, seed)
    expected = []
    started = time.perf_counter()
    for point in points:  # one box's points at least, then as many as CHECK_SECONDS allow
        if len(expected) >= POINTS_PER_BOX and time.perf_counter() - started > CHECK_SECONDS:
            break
        expected.append(checker.outputs(point))
    points, expected = points[:len(expected)], np.stack(expected)
    x = torch.from_numpy(points.astype(np.float64)).to(network.dtype).to(network.device)
    x = x.reshape(len(points), *network.input_shape)
    # onnxruntime rounds: its outputs lie in the bounds with the deployed model's rounding
    real, network.real_arithmetic = network.real_arithmetic, False
    try:
        with torch.no_grad():
            out = interval_bounds(network, Interval(x, x))[network.output]
    finally:
        network.real_arithmetic = real
    lower = out.lower.reshape(len(points), -1).double().cpu().numpy()
    upper = out.upper.reshape(len(points), -1).double().cpu().numpy()
    nan = np.isnan(expected)
    with np.errstate(invalid="ignore"):
        outside = np.where(nan, np.isfinite(lower) & np.isfinite(upper), (expected < lower) | (expected > upper))
    if not outside.any():
        return None
    point, output = (int(i) for i in np.argwhere(outside)[0])
    return (f"onnxruntime gives Y_{output} = {expected[point, output]:.9g} at a sampled input, outside the "
            f"network's bounds [{lower[point, output]:.9g}, {upper[point, output]:.9g}] there")
