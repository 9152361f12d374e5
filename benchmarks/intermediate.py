"""Forward-mode against backward intermediate bounds: time and tightness side by side.

    python -m verifier.benchmarks.intermediate [MODEL PROP ...]

For each instance (default: shared models with 1 to 784 inputs, when the shared data is found),
one CROWN bound of the property's rows over its boxes with the intermediate bounds of every
method of verifier.bounds.intermediate (and IBP for scale): seconds, and the smallest and mean
lower bound of the rows (higher is tighter). The `auto` column names what the rule picks. The
baseline is the backward method, measured in the same run; each method runs `--repeat` times
and the median time is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from verifier.benchmarks.paths import shared_root
from verifier.bounds.engine import backward_bound, interval_bounds, interval_concretize
from verifier.bounds.intermediate import intermediate_bounds, resolve
from verifier.instance import open_instance

DEFAULT = [  # (model, property) under the shared benchmarks folder
    ("vnncomp2021/acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "vnncomp2021/acasxu/prop_1.vnnlib"),
    ("vnncomp2021/nn4sys/nets/normal_1000.onnx.gz", "vnncomp2021/nn4sys/specs/normal_1000_1.vnnlib"),
    ("opcoverage/nn4sys/onnx/mscn_128d.onnx", "opcoverage/nn4sys/vnnlib/cardinality_0_1_128.vnnlib"),
    ("opcoverage/cgan/onnx/cGAN_imgSz32_nCh_1_transposedConvPadding_1.onnx",
     "opcoverage/cgan/vnnlib/cGAN_imgSz32_nCh_1_transposedConvPadding_1_prop_0_input_eps_0.010_output_eps_0.015.vnnlib"),
    ("opcoverage/cgan/onnx/cGAN_imgSz32_nCh_3_upsample.onnx",
     "opcoverage/cgan/vnnlib/cGAN_imgSz32_nCh_3_upsample_prop_0_input_eps_0.010_output_eps_0.015.vnnlib"),
    ("vnncomp2021/mnistfc/mnist-net_256x6.onnx", "vnncomp2021/mnistfc/prop_0_0.03.vnnlib"),
]
METHODS = ("ibp", "forward", "both", "backward")


def measure(model: str, prop: str, repeat: int) -> list[tuple[str, float, float, float]]:
    """(method, median seconds, smallest and mean row lower bound) for every method."""
    instance = open_instance(model, prop)
    network, spec = instance.network, instance.spec
    coeffs = spec.matrix.reshape(spec.cases, spec.matrix.shape[1], *network.output_shape)
    rows = []
    for method in METHODS:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            with torch.no_grad():
                if method == "ibp":
                    bound = interval_concretize(coeffs, interval_bounds(network, spec.box)[network.output])
                else:
                    bounds = intermediate_bounds(network, spec.box, method)
                    bound = backward_bound(network, network.output, coeffs, bounds)
            times.append(time.perf_counter() - started)
        rows.append((method, statistics.median(times), float(bound.lower.min()), float(bound.lower.mean())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="*", help="MODEL PROP pairs (default: shared models)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if len(args.pairs) % 2:
        parser.error("give MODEL PROP pairs")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2]))
    if not pairs:
        root = shared_root() / "benchmarks"
        pairs = [(str(root / m), str(root / p)) for m, p in DEFAULT if (root / m).exists()]
        if not pairs:
            print(f"no shared models under {root}: give MODEL PROP pairs", file=sys.stderr)
            return 2
    columns = " ".join(f"{m + ' s':>10s} {m + ' min':>11s} {m + ' mean':>11s}" for m in METHODS)
    print(f"{'model':58s} {'inputs':>6s} {'auto':>8s} {columns}  backward/both time")
    for model, prop in pairs:
        rows = measure(model, prop, args.repeat)
        box = open_instance(model, prop).spec.box
        seconds = {method: s for method, s, _, _ in rows}
        cells = " ".join(f"{s:10.2f} {low:11.4g} {mean:11.4g}" for _, s, low, mean in rows)
        name = model.rsplit("/", 1)[-1][:58]
        print(f"{name:58s} {box.lower[0].numel():6d} {resolve('auto', box):>8s} {cells}  "
              f"{seconds['backward'] / seconds['both']:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
