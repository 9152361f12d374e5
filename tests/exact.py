"""Exact minima of small ReLU networks over boxes, for judging branch and bound's verdicts.

A network here is a list of float32-representable (W [out, in], b [out]) layers with ReLU between
them and one output. Its least output over a box is found by a mixed-integer program (HiGHS): one
binary per ReLU whose interval crosses 0, with the big-M constraints of its interval, i.e. every
activation pattern of the box is searched by the solver's own branch and bound, each pattern an
LP. `check_networks` runs branch and bound just above and just below that minimum and counts
wrong answers; `python -m tests.exact COUNT [SEED]` runs it on COUNT networks.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import highspy
import numpy as np
import onnx
import torch

from tests.graphs import GraphWriter
from verifier.graph import build_network
from verifier.load import load_model
from verifier.prove import prove
from verifier.search import branch_and_bound
from verifier.settings import BranchSettings
from verifier.spec import Spec
from verifier.vnnlib import parse_text

Layers = list[tuple[np.ndarray, np.ndarray]]


def random_layers(rng: np.random.Generator, inputs: int, width: int, depth: int) -> Layers:
    sizes = [inputs] + [width] * depth + [1]
    return [(rng.normal(0, 1.2 / np.sqrt(n_in), (n_out, n_in)).astype(np.float32).astype(np.float64),
             rng.normal(0, 0.2, n_out).astype(np.float32).astype(np.float64))
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def network_of(layers: Layers):
    """The layers as an ONNX model (Gemm and Relu), loaded and built as the verifier does, in float64."""
    g = GraphWriter(np.random.default_rng(0))
    x = "x"
    for i, (weight, bias) in enumerate(layers):
        if i > 0:
            x = g.op("Relu", [x])
        x = g.op("Gemm", [x, g.const(weight), g.const(bias)], transB=1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlp.onnx"
        onnx.save(g.model([1, layers[0][0].shape[1]], x, [1, 1]), path)
        return build_network(load_model(str(path))).double()


def exact_minimum(layers: Layers, low: float, high: float) -> tuple[float, np.ndarray]:
    """The least output over the box [low, high]^n and a point where it is reached (MILP)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-9)
    inputs = layers[0][0].shape[1]
    x = [h.addVariable(lb=low, ub=high) for _ in range(inputs)]
    lower, upper = np.full(inputs, low), np.full(inputs, high)
    previous = x
    for index, (weight, bias) in enumerate(layers):
        positive, negative = np.clip(weight, 0, None), np.clip(weight, None, 0)
        z_low = positive @ lower + negative @ upper + bias
        z_high = positive @ upper + negative @ lower + bias
        z = []
        for j in range(weight.shape[0]):
            v = h.addVariable(lb=-highspy.kHighsInf, ub=highspy.kHighsInf)
            h.addConstr(sum(float(weight[j, i]) * previous[i] for i in range(len(previous))) - v == -float(bias[j]))
            z.append(v)
        if index == len(layers) - 1:
            h.minimize(z[0])
            break
        activations = []
        for j, v in enumerate(z):
            lo, hi = float(z_low[j]), float(z_high[j])
            if hi <= 0:
                activations.append(None)
                continue
            a = h.addVariable(lb=0, ub=max(hi, 0.0))
            if lo >= 0:
                h.addConstr(a - v == 0)
            else:
                on = h.addIntegral(lb=0, ub=1)
                h.addConstr(a - v >= 0)
                h.addConstr(a - v - lo * on <= -lo)  # a <= v - lo (1 - on)
                h.addConstr(a - hi * on <= 0)
            activations.append(a)
        zero = h.addVariable(lb=0, ub=0)
        previous = [zero if a is None else a for a in activations]
        lower, upper = np.clip(z_low, 0, None), np.clip(z_high, 0, None)
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"MILP not solved: {h.modelStatusToString(h.getModelStatus())}")
    solution = np.array(h.getSolution().col_value[:inputs])
    return float(h.getInfo().objective_function_value), solution


def spec_below(threshold: float, low: float, high: float, inputs: int) -> Spec:
    """'Y_0 <= threshold somewhere in the box' (proved: Y_0 > threshold everywhere)."""
    box = "".join(f"(assert (>= X_{i} {low!r}))(assert (<= X_{i} {high!r}))" for i in range(inputs))
    text = "".join(f"(declare-const X_{i} Real)" for i in range(inputs))
    text += f"(declare-const Y_0 Real){box}(assert (<= Y_0 {threshold!r}))"
    return Spec.build(parse_text(text), (1, inputs), torch.float64)


@dataclass
class Tally:
    wrong: list[str] = field(default_factory=list)  # proofs of violated properties
    proved: int = 0      # of the provable side
    found: int = 0       # counterexamples of the violated side
    instances: int = 0


def check_networks(count: int, seed: int = 0, seconds: float = 2.0, margin: float = 1e-3) -> Tally:
    """For `count` random networks (2-3 inputs, 2-3 layers of 6-10), every branching choice
    (ReLU splits by score, by filtered branching, without leaf LPs; input splits): the property 'output <= m +
    margin' (violated at the exact minimiser) must never be proved; 'output <= m - margin' is
    counted when proved."""
    rng = np.random.default_rng(seed)
    tally = Tally()
    choices = (("relu", 1, True), ("relu", 3, True), ("input", 1, True), ("relu", 1, False))
    for n in range(count):
        inputs, width, depth = int(rng.integers(2, 4)), int(rng.integers(6, 11)), int(rng.integers(2, 4))
        layers = random_layers(rng, inputs, width, depth)
        network = network_of(layers)
        minimum, point = exact_minimum(layers, -1.0, 1.0)
        at_point = float(network(torch.from_numpy(point).reshape(1, 1, inputs)))
        on, candidates, leaf_lp = choices[n % len(choices)]
        settings = BranchSettings(batch=16, iterations=5, candidates=candidates, leaf_lp=leaf_lp)
        for threshold, violated in ((at_point + margin, True), (minimum - margin, False)):
            spec = spec_below(threshold, -1.0, 1.0, inputs)
            crown = prove(network, spec, "crown")
            tally.instances += 1
            if crown.all_proved:
                if violated:
                    tally.wrong.append(f"network {n}: CROWN proved output <= {threshold} (minimum {minimum})")
                tally.proved += not violated
                continue
            stop = time.monotonic() + seconds
            time_left = lambda stop=stop: stop - time.monotonic()  # noqa: E731
            result = branch_and_bound(network, spec, 0, crown.intervals, settings, time_left, on,
                                      _probe(network, threshold))
            if result.proved and violated:
                tally.wrong.append(f"network {n} ({on}, k={candidates}, leaf LP {leaf_lp}): proved output <= "
                                   f"{threshold} (minimum {minimum})")
            tally.proved += result.proved and not violated
            tally.found += result.counterexample is not None
    return tally


def _probe(network, threshold: float):
    def probe(points):
        values = network(points.reshape(-1, 1, points.shape[-1])).flatten()
        hit = (values <= threshold).nonzero().flatten()
        return points[hit[0]] if hit.numel() else None
    return probe


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    started = time.perf_counter()
    tally = check_networks(count, seed)
    print(f"{count} networks, {tally.instances} instances: {len(tally.wrong)} wrong, "
          f"{tally.proved}/{count} provable sides proved, {tally.found} counterexamples found on the "
          f"violated sides, {time.perf_counter() - started:.0f}s")
    for line in tally.wrong:
        print(line)
