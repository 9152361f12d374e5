"""Sin and Cos at large arguments, against the truth: onnxruntime on every float of a small box.

Near |x| = 1e6 a float32 lies up to 1/32 from the nearest peak of sin, and a peak position
computed in float32 is off by several ulps: bounds from such points miss the true maximum. The
boxes below sit on the peaks and troughs (and the zero crossings, where Cos as sin(x + pi/2)
rounded x) of Sin and Cos at 1e5, 1e6, 1e7 in float32 and 1e15 in float64, a few ulps wide;
their positions come from mpmath, and the values they must contain from onnxruntime run on every
float the box holds (np.nextafter steps) and, in float64, from mpmath as well.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from verifier import cli
from verifier.bounds.core import Interval
from verifier.bounds.engine import backward_bound, interval_bounds
from verifier.bounds.smooth import Periodic
from verifier.graph import build_network
from verifier.load import load_model
from verifier.spec import RELATIVE_MARGIN

mpmath.mp.prec = 160
TORCH = {np.float32: torch.float32, np.float64: torch.float64}
ELEMENT = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}
# Extrema of each function: (phase of the maxima, of the minima), both + 2 pi k.
EXTREMA = {"Sin": (mpmath.pi / 2, -mpmath.pi / 2), "Cos": (mpmath.mpf(0), mpmath.pi)}
ULPS = (0, 1, 3, 40)  # half-widths of the boxes around each extremum, in ulps of its nearest float
CASES = [("Sin", np.float32, 1e5), ("Sin", np.float32, 1e6), ("Sin", np.float32, 1e7),
         ("Cos", np.float32, 1e5), ("Cos", np.float32, 1e6), ("Cos", np.float32, 1e7),
         ("Sin", np.float64, 1e15), ("Cos", np.float64, 1e15)]


def write_model(path, op: str, dtype) -> str:
    """Y = op(X), X and Y of shape [N, 1] (the verifier reads N as 1; onnxruntime takes any N)."""
    graph = helper.make_graph(
        [helper.make_node(op, ["X"], ["Y"])], "periodic",
        [helper.make_tensor_value_info("X", ELEMENT[dtype], ["N", 1])],
        [helper.make_tensor_value_info("Y", ELEMENT[dtype], ["N", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def run_onnx(path: str, xs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": xs.reshape(-1, 1)})[0].reshape(-1)


def floats_between(low, high) -> np.ndarray:
    values = [low]
    while values[-1] < high:
        values.append(np.nextafter(values[-1], type(low)(np.inf)))
    return np.array(values)


def extrema_near(op: str, magnitude: float, count: int = 12) -> list[tuple[mpmath.mpf, int]]:
    """The `count` maxima (sign 1) and minima (-1) of op nearest +-magnitude, as exact reals."""
    k0 = int(mpmath.floor(magnitude / (2 * mpmath.pi)))
    found = []
    for k in range(k0, k0 + count // 2):
        for side in (1, -1):
            for phase, sign in zip(EXTREMA[op], (1, -1)):
                found.append((side * 2 * mpmath.pi * k + phase, sign))
    return found


def nearest(value: mpmath.mpf, dtype):
    return dtype(float(value))  # float64 rounding, then dtype's: within an ulp, enough for a box centre


def boxes(op: str, dtype, magnitude: float) -> list[tuple[np.ndarray, int]]:
    """Every float of each box (on the extrema, each half-width of ULPS) and the extremum's sign."""
    out = []
    for position, sign in extrema_near(op, magnitude):
        centre = nearest(position, dtype)
        for ulps in ULPS:
            low = high = centre
            for _ in range(ulps):
                low, high = np.nextafter(low, dtype(-np.inf)), np.nextafter(high, dtype(np.inf))
            out.append((floats_between(low, high), sign))
    return out


def exact_values(op: str, xs: np.ndarray) -> np.ndarray:
    f = mpmath.sin if op == "Sin" else mpmath.cos
    return np.array([float(f(mpmath.mpf(float(x)))) for x in xs])


def batch_box(points: list[np.ndarray], dtype) -> Interval:
    low = torch.tensor(np.array([p[0] for p in points]), dtype=TORCH[dtype]).reshape(-1, 1, 1)
    high = torch.tensor(np.array([p[-1] for p in points]), dtype=TORCH[dtype]).reshape(-1, 1, 1)
    return Interval(low, high)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("periodic")
    return {(op, dtype): write_model(folder / f"{op}_{dtype.__name__}.onnx", op, dtype)
            for op in ("Sin", "Cos") for dtype in (np.float32, np.float64)}


def truth(models, op, dtype, magnitude):
    """The boxes, and for each the least and greatest value onnxruntime (and, in float64, mpmath)
    gives on its floats."""
    path = models[op, dtype]
    found = boxes(op, dtype, magnitude)
    points = [xs for xs, _ in found]
    flat = np.concatenate(points)
    ys = run_onnx(path, flat).astype(np.float64)
    assert np.all(np.abs(ys) <= 1)  # what Periodic.ibp's clamp relies on
    cuts = np.cumsum([len(p) for p in points])[:-1]
    per_box = np.split(ys, cuts)
    least = np.array([y.min() for y in per_box])
    most = np.array([y.max() for y in per_box])
    if dtype == np.float64:
        exact = np.split(exact_values(op, flat), cuts)
        least = np.minimum(least, [y.min() for y in exact])
        most = np.maximum(most, [y.max() for y in exact])
    return path, points, per_box, least, most


@pytest.mark.parametrize("op,dtype,magnitude", CASES, ids=[f"{o}-{d.__name__}-{m:g}" for o, d, m in CASES])
def test_interval_bounds_contain_every_value_of_the_box(models, op, dtype, magnitude):
    path, points, _, least, most = truth(models, op, dtype, magnitude)
    network = build_network(load_model(path))
    with torch.no_grad():
        bound = interval_bounds(network, batch_box(points, dtype))[network.output]
    lower, upper = bound.lower.double().reshape(-1).numpy(), bound.upper.double().reshape(-1).numpy()
    assert np.all(lower <= least), f"lower bound above the least value by {np.max(lower - least):.3g}"
    assert np.all(upper >= most), f"upper bound below the greatest value by {np.max(most - upper):.3g}"
    # and tight: on boxes narrower than 1, within the allowances of the exact range on the reals
    # (which holds +-1 when the box holds the extremum, and f at the ends otherwise)
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    for b, (xs, (position, sign)) in enumerate(zip(points, [e for e in extrema_near(op, magnitude) for _ in ULPS])):
        if xs[-1] - xs[0] < 1:
            ends = exact_values(op, xs[[0, -1]])
            inside = xs[0] <= position <= xs[-1]
            exact_low = -1.0 if inside and sign < 0 else ends.min()
            exact_high = 1.0 if inside and sign > 0 else ends.max()
            assert exact_low - tolerance <= lower[b] and upper[b] <= exact_high + tolerance, (xs[0], xs[-1])


@pytest.mark.parametrize("op,dtype,magnitude", CASES, ids=[f"{o}-{d.__name__}-{m:g}" for o, d, m in CASES])
def test_crown_bounds_contain_every_value_of_the_box(models, op, dtype, magnitude):
    # the engine's backward bound of +-Y, with the margin a proof allows for its own rounding
    path, points, _, least, most = truth(models, op, dtype, magnitude)
    network = build_network(load_model(path))
    box = batch_box(points, dtype)
    coeffs = torch.tensor([1.0, -1.0], dtype=TORCH[dtype]).reshape(1, 2, 1, 1).repeat(len(points), 1, 1, 1)
    with torch.no_grad():
        bounds = interval_bounds(network, box)
        linear = backward_bound(network, network.output, coeffs, bounds)
    margin = (RELATIVE_MARGIN[TORCH[dtype]] * linear.magnitude).double().numpy()
    lower = linear.lower.double().numpy() - margin
    assert np.all(lower[:, 0] <= least), f"lower bound above the least value by {np.max(lower[:, 0] - least):.3g}"
    assert np.all(-lower[:, 1] >= most), f"upper bound below the greatest value by {np.max(most + lower[:, 1]):.3g}"


@pytest.mark.parametrize("op,dtype,magnitude", CASES, ids=[f"{o}-{d.__name__}-{m:g}" for o, d, m in CASES])
def test_lines_at_every_slope_hold_at_every_float_of_the_box(models, op, dtype, magnitude):
    # the relaxation itself (any slope in [-1, 1] must give sound lines, as alpha-CROWN picks
    # them), evaluated exactly: a and x are floats of `dtype`, so a * x is exact in float64 for
    # float32 and the float64 sum errs by far less than what is checked
    path, points, per_box, _, _ = truth(models, op, dtype, magnitude)
    rule = build_network(load_model(path)).rule(1)
    box = batch_box(points, dtype)
    slopes = torch.linspace(-1, 1, 21, dtype=TORCH[dtype])
    lower = box.lower.reshape(-1, 1).expand(-1, len(slopes))
    upper = box.upper.reshape(-1, 1).expand(-1, len(slopes))
    alpha = [slopes.expand_as(lower), slopes.expand_as(lower)]
    with torch.no_grad():
        lines = rule.relax(lower, upper, alpha)
    worst = 0.0
    for b, (xs, ys) in enumerate(zip(points, per_box)):
        xs = xs.astype(np.float64)  # (a float32 array times a Python float stays float32)
        if dtype == np.float64:
            ys = np.stack([ys, exact_values(op, xs)])
        for s in range(len(slopes)):
            a_low, b_low = float(lines.lower_slope[b, s]), float(lines.lower_intercept[b, s])
            a_high, b_high = float(lines.upper_slope[b, s]), float(lines.upper_intercept[b, s])
            tolerance = 4 * np.finfo(np.float64).eps * (np.abs(a_low * xs) + abs(b_low) + np.abs(a_high * xs)
                                                        + abs(b_high))
            worst = max(worst, np.max(a_low * xs + b_low - ys - tolerance),
                        np.max(ys - a_high * xs - b_high - tolerance))
    assert worst <= 0, f"a line misses a value by {worst:.3g}"


def test_cos_forward_is_cos_at_large_arguments(models):
    # the rule's forward (used by the attack and by the sampled soundness tests) is the operator's
    path = models["Cos", np.float32]
    network = build_network(load_model(path))
    xs = floats_between(np.float32(1e5), np.float32(1e5) + np.float32(4))  # 513 floats across a zero
    with torch.no_grad():
        ours = network(torch.from_numpy(xs).reshape(-1, 1, 1)).reshape(-1).double().numpy()
    reference = run_onnx(path, xs).astype(np.float64)
    assert np.max(np.abs(ours - reference)) <= 4 * np.finfo(np.float32).eps


def test_what_the_rule_relies_on_holds():
    # Periodic's premises: onnxruntime's float32 and float64 sin/cos err by less than OP_ERROR
    # eps and stay in [-1, 1]; torch's float64 sin/cos are accurate at large arguments (their
    # reduction is exact), so that atan2(sin l, cos l) is l mod 2 pi to far better than DELTA
    rng = np.random.default_rng(0)
    for op in ("Sin", "Cos"):
        for dtype in (np.float32, np.float64):
            graph = helper.make_graph([helper.make_node(op, ["X"], ["Y"])], "op",
                                      [helper.make_tensor_value_info("X", ELEMENT[dtype], [None])],
                                      [helper.make_tensor_value_info("Y", ELEMENT[dtype], [None])])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            model.ir_version = 8
            session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            scales = (1e5, 1e6, 1e7, 1e15, 1e30) if dtype == np.float32 else (1e5, 1e15, 1e100, 1e300)
            xs = np.concatenate([rng.uniform(-2, 2, 300) * s for s in scales]).astype(dtype)
            ys = session.run(None, {"X": xs})[0].astype(np.float64)
            exact = exact_values(op, xs)
            assert np.all(np.abs(ys) <= 1)
            assert np.max(np.abs(ys - exact)) <= Periodic.OP_ERROR * np.finfo(dtype).eps
        xs = np.concatenate([rng.uniform(-2, 2, 300) * s for s in (1e5, 1e15, 1e30, 1e100, 1e300)])
        f = torch.sin if op == "Sin" else torch.cos
        ours = f(torch.from_numpy(xs)).numpy()
        assert np.max(np.abs(ours - exact_values(op, xs))) <= 2 * np.finfo(np.float64).eps
    # so the phase the rule takes for the lower end is that end mod 2 pi, far within its DELTA
    xs = np.concatenate([rng.uniform(-2, 2, 200) * s for s in (1, 1e5, 1e7, 1e15, 1e30, 1e300)])
    phases = torch.atan2(torch.sin(torch.from_numpy(xs)), torch.cos(torch.from_numpy(xs))).numpy()
    with mpmath.workprec(1200):  # 1e300 mod 2 pi needs its thousand bits
        worst = 0.0
        for x, phase in zip(xs, phases):
            rest = mpmath.mpf(float(x)) - mpmath.mpf(float(phase))
            worst = max(worst, float(abs(rest - 2 * mpmath.pi * mpmath.nint(rest / (2 * mpmath.pi)))))
    assert worst <= Periodic.DELTA / 100


def vnnlib(path, low, high, sign: int, threshold: float) -> str:
    relation = ">=" if sign > 0 else "<="
    path.write_text(
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
        f"(assert (>= X_0 {float(low)!r}))\n(assert (<= X_0 {float(high)!r}))\n"
        f"(assert ({relation} Y_0 {threshold!r}))\n")
    return str(path)


# (op, dtype, magnitude, index of the extremum in extrema_near, half-width in ulps): boxes where
# peak positions computed in the model's dtype (2 pi k + pi/2, as before) missed the extreme value
# by 1.7e-3 (float32 at 1e6), 0.5 (at 1e7) and 9e-3 (float64 at 1e15)
VIOLATED = [("Sin", np.float32, 1e6, 2, 3), ("Cos", np.float32, 1e6, 2, 3), ("Sin", np.float32, 1e7, 3, 2),
            ("Cos", np.float32, 1e7, 0, 2), ("Sin", np.float64, 1e15, 10, 3), ("Cos", np.float64, 1e15, 21, 3)]


@pytest.mark.parametrize("op,dtype,magnitude,which,ulps", VIOLATED,
                         ids=[f"{v[0]}-{v[1].__name__}-{v[2]:g}-{v[3]}" for v in VIOLATED])
def test_a_violated_property_at_an_extremum_is_never_proved(models, tmp_path, capsys, op, dtype, magnitude,
                                                             which, ulps):
    # Y reaches within 1e-6 of its extreme value on the box: "Y >= that - 1e-6" holds at some
    # float of the box, so the answer may be sat, unknown or timeout, never unsat
    position, sign = extrema_near(op, magnitude)[which]
    low = high = nearest(position, dtype)
    for _ in range(ulps):
        low, high = np.nextafter(low, dtype(-np.inf)), np.nextafter(high, dtype(np.inf))
    path = models[op, dtype]
    ys = run_onnx(path, floats_between(low, high)).astype(np.float64)
    threshold = float(ys.max() - 1e-6) if sign > 0 else float(ys.min() + 1e-6)
    prop = vnnlib(tmp_path / "prop.vnnlib", low, high, sign, threshold)
    code = cli.main([path, prop, "--timeout", "30"])
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and verdict in ("sat", "unknown", "timeout"), verdict


def test_cos_at_a_zero_crossing_near_1e5_is_never_proved_above_its_value(models, tmp_path, capsys):
    # cos at a single float32 near a zero of cos, where its slope is 1: cos(x) as sin(x + pi/2)
    # rounds x + pi/2 to a float32 (1/256 apart there) and was off by up to 4e-3
    path = models["Cos", np.float32]
    zero = nearest(mpmath.pi / 2 + 2 * mpmath.pi * math.floor(1e5 / (2 * math.pi)), np.float32)
    xs = floats_between(zero - np.float32(0.25), zero + np.float32(0.25))
    ys = run_onnx(path, xs).astype(np.float64)
    shifted = np.sin((xs + np.float32(math.pi / 2)).astype(np.float32).astype(np.float64))
    worst = np.argmax(np.abs(shifted - ys))
    x, y = xs[worst], ys[worst]
    network = build_network(load_model(path))
    box = Interval(torch.tensor([[[x]]]), torch.tensor([[[x]]]))
    with torch.no_grad():
        bound = interval_bounds(network, box)[network.output]
    assert float(bound.lower) <= y <= float(bound.upper)
    # the property that sin(x + pi/2) refutes: Y beyond it on the side where cos(x) lies
    sign = 1 if shifted[worst] < y else -1
    prop = vnnlib(tmp_path / "prop.vnnlib", x, x, sign, float(y - sign * 1e-6))
    code = cli.main([path, prop, "--timeout", "30"])
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and verdict in ("sat", "unknown", "timeout"), verdict
