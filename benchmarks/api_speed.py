"""Library API against `verify bounds`: the time of the same bound computation by both paths, and their agreement.

    python -m benchmarks.api_speed [--repeat N] [--budget S] [--threads T] [--only SUBSTRING]

For each of a few shared models of different kinds (with the first property its suite's instances
CSV pairs it with, all its input boxes), this times the bound computation alone by both paths:
`raw_output_bounds(network, spec.box, method)` on the instance `verify bounds` opens, and
`BoundedModule(model).compute_bounds(lower=box.lower, upper=box.upper, method=method)` with the
module built once beforehand; both under torch.no_grad(), after one untimed warm-up call each, the
two paths' runs interleaved. It prints the median of N runs of each (fewer once a model and method
has taken S seconds), the ratio api/verify, and the largest absolute difference between the two
paths' lower and upper bounds (0 when they agree exactly). IBP and CROWN run on every model,
alpha-CROWN only on the two smallest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

import verifier
from verifier.benchmarks.paths import suites_root
from verifier.instance import Instance, open_instance
from verifier.output_bounds import raw_output_bounds

# (suite, model inside it, also alpha-CROWN): a range of kinds, the two smallest first.
MODELS = (
    ("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx", True),
    ("mnistfc", "mnist-net_256x2.onnx", True),
    ("eran", "nets/ffnnSIGMOID__Point_6x200.onnx", False),
    ("oval21", "nets/cifar_base_kw.onnx", False),
    ("cifar10_resnet", "onnx/resnet_2b.onnx", False),
    ("marabou-cifar10", "nets/cifar10_small.onnx", False),
    ("verivital", "Convnet_avgpool.onnx", False),
)


def first_property(suite: Path, model: str) -> Path:
    """The first property the suite's instances CSV pairs with `model`."""
    for line in next(suite.glob("*instances.csv")).read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and Path(parts[0]) == Path(model):
            return suite / parts[1]
    raise FileNotFoundError(f"{suite.name}: no instance of {model}")


def timed(call) -> tuple[float, tuple[Tensor, Tensor]]:
    start = time.perf_counter()
    with torch.no_grad():
        result = call()
    return time.perf_counter() - start, result


def difference(a: Tensor, b: Tensor) -> float:
    """Largest |a - b|, equal infinities counting as 0."""
    return float(torch.where(a == b, 0.0, (a.double() - b.double()).abs()).max())


def compare(instance: Instance, net: verifier.BoundedModule, method: str, repeat: int, budget: float) -> dict:
    box = instance.spec.box
    paths = {
        "verify": lambda: raw_output_bounds(instance.network, box, method),
        "api": lambda: net.compute_bounds(lower=box.lower, upper=box.upper, method=method),
    }
    bounds = {name: timed(call)[1] for name, call in paths.items()}  # the warm-up
    times: dict[str, list[float]] = {name: [] for name in paths}
    start = time.perf_counter()
    while len(times["api"]) < repeat and (not times["api"] or time.perf_counter() - start < budget):
        for name, call in paths.items():
            seconds, bounds[name] = timed(call)
            times[name].append(seconds)
    verify, api = (statistics.median(times[name]) for name in paths)
    return {"verify": verify, "api": api, "runs": len(times["api"]),
            "lower": difference(bounds["api"][0], bounds["verify"][0]),
            "upper": difference(bounds["api"][1], bounds["verify"][1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds after which a method stops repeating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="only models whose path contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| model | method | cases | runs | verify s | api s | api/verify | max abs diff lower | max abs diff upper |")
    print("|---" * 9 + "|")
    for suite, name, alpha in MODELS:
        if args.only not in f"{suite}/{name}":
            continue
        model = suites_root() / suite / name
        prop = first_property(suites_root() / suite, name)
        instance = open_instance(str(model), str(prop), "cpu")
        net = verifier.BoundedModule(model)
        for method in ("ibp", "crown", "alpha-crown") if alpha else ("ibp", "crown"):
            r = compare(instance, net, method, args.repeat, args.budget)
            print(f"| {suite}/{model.name} | {method} | {instance.spec.cases} | {r['runs']} | {r['verify']:.4f} | "
                  f"{r['api']:.4f} | {r['api'] / r['verify']:.2f} | {r['lower']:.3g} | {r['upper']:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
