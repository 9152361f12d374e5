"""Bound-engine performance on every shared model: IBP, CROWN and alpha-CROWN times, memory, tightness.

    python -m verifier.benchmarks.perf_bounds [--repeat N] [--out FILE.md] [--only SUBSTRING] [--threads T]
                                     [--alpha-iterations K] [--model-limit S]

For each model (the first property listed for it in its suite's instances CSV, first input box)
this prints the median time of IBP and of CROWN over N runs and the time of one alpha-CROWN run of
exactly K iterations (no early stop; default 20), all bounding every raw output (alpha-CROWN
optimises each output's lower and upper bound as its own row, intermediate bounds included); the
peak resident memory of a fresh process that loaded the model and ran all three; the mean bound
gap (upper - lower) of each method; and the nodes whose operator has no linear rule (bounded by
intervals inside CROWN). Each model runs in its own process so that peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from verifier.benchmarks.paths import shared_root


def model_property_pairs(root: Path) -> list[tuple[Path, Path]]:
    """Every model file under `root` with the first property the instances CSVs pair it with."""
    pairs: dict[Path, Path] = {}
    for csv_path in sorted(root.rglob("*instances.csv")):
        for line in csv_path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2 and parts[0]:
                pairs.setdefault((csv_path.parent / parts[0]).resolve(), (csv_path.parent / parts[1]).resolve())
    return sorted(pairs.items())


def measure(model_path: str, property_path: str, repeat: int, threads: int, alpha_iterations: int) -> dict:
    """Run in a fresh process: times, memory and gaps for one model."""
    import resource

    import torch

    from verifier.bounds.core import Interval
    from verifier.bounds.optimize import intermediate_fits
    from verifier.graph import build_network
    from verifier.load import load_model
    from verifier.output_bounds import raw_output_bounds
    from verifier.settings import AlphaSettings
    from verifier.spec import Spec
    from verifier.vnnlib import parse_file

    torch.set_num_threads(threads)
    model = load_model(model_path)
    prop = parse_file(property_path).padded_to_outputs(model.num_outputs)
    case = prop.cases[0]
    network = build_network(model, torch.from_numpy((case.lower + case.upper) / 2))
    spec = Spec.build(prop, network.input_shape, network.dtype)
    box = Interval(spec.box.lower[:1], spec.box.upper[:1])
    result = {"nodes": len(network.nodes), "fallback": [n.label for n in network.nodes[1:]
                                                        if not network.rules[n.rule].has_linear_rule]}
    for method in ("ibp", "crown"):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            with torch.no_grad():
                lower, upper = raw_output_bounds(network, box, method)
            times.append(time.perf_counter() - start)
        result[method] = statistics.median(times)
        result[f"{method}_gap"] = float((upper - lower).mean())
    fixed_length = AlphaSettings(iterations=alpha_iterations, patience=alpha_iterations)
    start = time.perf_counter()
    lower, upper = raw_output_bounds(network, box, "alpha-crown", fixed_length)
    result["alpha"] = time.perf_counter() - start
    result["alpha_gap"] = float((upper - lower).mean())
    with torch.no_grad():
        result["alpha_intermediate"] = intermediate_fits(network, box, fixed_length)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alpha-iterations", type=int, default=20)
    parser.add_argument("--model-limit", type=float, default=600.0, help="seconds allowed per model (all methods)")
    parser.add_argument("--only", default="", help="only models whose path contains this")
    parser.add_argument("--out", help="also write the table as markdown here")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PROPERTY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.repeat, args.threads, args.alpha_iterations)))
        return 0
    rows = []
    header = ("| model | nodes | IBP s | CROWN s | alpha s | peak MB | IBP gap | CROWN gap | alpha gap "
              "| alpha intermediate | interval fallback |")
    rule = "|---" * (header.count("|") - 1) + "|"
    print(header)
    print(rule)
    for root in (shared_root() / "benchmarks" / "vnncomp2021", shared_root() / "benchmarks" / "opcoverage"):
        for model, prop in model_property_pairs(root):
            if args.only not in str(model):
                continue
            name = str(model.relative_to(shared_root() / "benchmarks"))
            try:
                done = subprocess.run([sys.executable, "-m", "verifier.benchmarks.perf_bounds", "--one", str(model),
                                       str(prop), "--repeat", str(args.repeat), "--threads", str(args.threads),
                                       "--alpha-iterations", str(args.alpha_iterations)],
                                      capture_output=True, text=True, timeout=args.model_limit)
            except subprocess.TimeoutExpired:
                done = subprocess.CompletedProcess([], 1, "", f"not finished within {args.model_limit:g} s")
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:90]
                line = f"| {name} |{' - |' * 9} {reason} |"
            else:
                r = json.loads(done.stdout.strip().splitlines()[-1])
                line = (f"| {name} | {r['nodes']} | {r['ibp']:.4f} | {r['crown']:.4f} | {r['alpha']:.3f} | "
                        f"{r['peak_mb']:.0f} | {r['ibp_gap']:.4g} | {r['crown_gap']:.4g} | {r['alpha_gap']:.4g} | "
                        f"{'yes' if r['alpha_intermediate'] else 'no'} | {', '.join(r['fallback']) or 'none'} |")
            print(line, flush=True)
            rows.append(line)
    if args.out:
        Path(args.out).write_text("\n".join([header, rule, *rows]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
