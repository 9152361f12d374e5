"""Does alpha-CROWN gain over CROWN under the installed torch?

    python -m verifier.benchmarks.alpha_gain [MODEL PROP]

Prints the torch version, then for each instance the mean gap (upper - lower bound of every raw
output, averaged over outputs and input boxes) of CROWN and of alpha-CROWN, their ratio and times.
Without arguments it checks a small random ReLU network built here and, when the shared benchmarks
are found ($VERIFIER_SHARED, else a `shared` folder beside any folder above this file), the mnistfc
256x4 network on prop_0_0.03. Exits 1 if alpha-CROWN gains nothing on some instance (torch 2.14
once made its ReLU slopes receive no gradient, and alpha-CROWN returned CROWN's bounds).

Self-contained on purpose (it imports only the verifier package), so it can move elsewhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from verifier.bounds.core import Interval
from verifier.graph import build_network
from verifier.load import LoadedModel
from verifier.output_bounds import output_bounds, raw_output_bounds

MNIST = ("benchmarks/vnncomp2021/mnistfc/mnist-net_256x4.onnx", "benchmarks/vnncomp2021/mnistfc/prop_0_0.03.vnnlib")
MIN_GAIN = 1e-4  # relative: alpha-CROWN's mean gap must be below CROWN's by at least this much


def random_relu_network(seed: int = 0, widths: tuple[int, ...] = (6, 32, 32, 4)):
    """A dense ReLU network with seeded weights, converted like a loaded model (float64)."""
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:]):
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.copy_(1.5 * torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5)
            linear.bias.copy_(0.1 * torch.randn(n_out, generator=generator))
        layers += [linear, nn.ReLU()]
    module = torch.fx.symbolic_trace(nn.Sequential(*layers[:-1]).double())
    name = "random ReLU " + "x".join(map(str, widths))
    return name, build_network(LoadedModel(name, module, "x", (1, widths[0]), (1, widths[-1]), torch.float64))


def random_box(network, seed: int = 0, radius: float = 0.5) -> Interval:
    generator = torch.Generator().manual_seed(seed)
    center = torch.randn((2, *network.input_shape), generator=generator, dtype=torch.float64)
    return Interval(center - radius, center + radius)


def shared_root() -> Path | None:
    """$VERIFIER_SHARED, else the first `shared` folder beside this file or a folder above it."""
    if os.environ.get("VERIFIER_SHARED"):
        return Path(os.environ["VERIFIER_SHARED"])
    for folder in Path(__file__).resolve().parents:
        if (folder / "shared").is_dir():
            return folder / "shared"
    return None


def _mean_gap(lower: torch.Tensor, upper: torch.Tensor) -> float:
    return float((upper - lower).double().mean())


def built_gaps() -> tuple[str, dict[str, tuple[float, float]]]:
    name, network = random_relu_network()
    box = random_box(network)
    gaps = {}
    for method in ("crown", "alpha-crown"):
        start = time.perf_counter()
        with torch.no_grad():
            lower, upper = raw_output_bounds(network, box, method)
        gaps[method] = (_mean_gap(lower, upper), time.perf_counter() - start)
    return name, gaps


def file_gaps(model: str, prop: str) -> tuple[str, dict[str, tuple[float, float]]]:
    gaps = {}
    for method in ("crown", "alpha-crown"):
        result = output_bounds(model, prop, method)
        cases = result["cases"]
        total = sum(sum(u - lo for lo, u in zip(c["lower"], c["upper"])) for c in cases)
        gaps[method] = (total / sum(len(c["lower"]) for c in cases), result["seconds"])
    return f"{Path(model).name} {Path(prop).name}", gaps


def report(name: str, gaps: dict[str, tuple[float, float]]) -> bool:
    """Print one line; whether alpha-CROWN gained."""
    (crown, crown_s), (alpha, alpha_s) = gaps["crown"], gaps["alpha-crown"]
    ratio = alpha / crown if crown > 0 else float("nan")
    gained = crown - alpha > MIN_GAIN * abs(crown)
    print(f"{name}: CROWN gap {crown:.4f} ({crown_s:.2f} s), alpha-CROWN gap {alpha:.4f} ({alpha_s:.2f} s), "
          f"ratio {ratio:.3f}{'' if gained else '  NO GAIN'}", flush=True)
    return gained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verifier.benchmarks.alpha_gain",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", metavar="MODEL PROP", help="an ONNX model and a VNN-LIB property")
    args = parser.parse_args(argv)
    if len(args.files) not in (0, 2):
        parser.error("give MODEL and PROP, or nothing")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"torch {torch.__version__}", flush=True)
    if args.files:
        results = [file_gaps(*args.files)]
    else:
        results = [built_gaps()]
        root = shared_root()
        if root is not None and all((root / p).exists() for p in MNIST):
            results.append(file_gaps(*(str(root / p) for p in MNIST)))
        else:
            print(f"(mnistfc 256x4 skipped: not found under {root or '$VERIFIER_SHARED or ../shared'})")
    gained = [report(name, gaps) for name, gaps in results]
    return 0 if all(gained) else 1


if __name__ == "__main__":
    sys.exit(main())
