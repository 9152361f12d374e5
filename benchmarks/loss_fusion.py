"""Loss fusion: time and peak memory of one certified-training step as the number of classes grows.

    python -m benchmarks.loss_fusion [--classes 10 100 200] [--batch 64] [--steps 5] [--method crown-ibp]

One step is: bound the robust cross-entropy of a batch over an L-inf ball (eps 0.03), back-propagate
it, and take an Adam step, on an MLP 784-512-512-K with random data. Without fusion the bound is
CE(-m, y) of the lower bounds m of the K margins z_y - z_j (K backward rows per sample, through
`compute_bounds(C=...)`); with fusion it is the upper bound of the loss itself, which is part of
the bounded graph (`robust_loss`: one row per sample). Each configuration runs in its own process,
so that its peak resident memory is its own: the peak over the measured steps (Linux's VmHWM, reset
after a warm-up step) less the resident memory before them.
Prints the median step time and the peak, and the ratios without/with fusion.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

EPS = 0.03


def _step_figures(classes: int, batch: int, steps: int, method: str, fused: bool) -> dict:
    import verifier

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, classes))
    x, labels = torch.rand(batch, 784), torch.randint(0, classes, (batch,))
    net = verifier.BoundedModule(model, x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    rows = torch.eye(classes)[labels].unsqueeze(1) - torch.eye(classes).unsqueeze(0)

    def step() -> None:
        if fused:
            loss = net.robust_loss(x, labels, eps=EPS, method=method).mean()
        else:
            margins, _ = net.compute_bounds(x, eps=EPS, method=method, C=rows, bound_upper=False)
            loss = F.cross_entropy(-margins, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: the trace, the first build
    before = _reset_peak()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times), "peak_mb": (_memory_kb("VmHWM") - before) / 1024}


def _reset_peak() -> int:
    """Reset the process's peak resident memory to its current one (Linux: clear_refs 5), in kB."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _memory_kb("VmRSS")


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 200])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--method", default="crown-ibp", choices=["ibp", "crown-ibp", "crown"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("CLASSES", "FUSED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:  # a child: one configuration, figures as JSON on stdout
        print(json.dumps(_step_figures(int(args.one[0]), args.batch, args.steps, args.method, args.one[1] == "1")))
        return
    print(f"MLP 784-512-512-K, batch {args.batch}, {args.method}, L-inf eps {EPS}, median of {args.steps} steps")
    print("| classes | unfused s/step | fused s/step | time ratio | unfused peak MB | fused peak MB | memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for classes in args.classes:
        figures = []
        for fused in (False, True):
            command = [sys.executable, "-m", "benchmarks.loss_fusion", "--batch", str(args.batch), "--steps",
                       str(args.steps), "--method", args.method, "--threads", str(args.threads),
                       "--one", str(classes), "1" if fused else "0"]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
        plain, fused = figures
        speedup = plain["seconds"] / fused["seconds"]
        saving = plain["peak_mb"] / max(fused["peak_mb"], 1)
        print(f"| {classes} | {plain['seconds']:.3f} | {fused['seconds']:.3f} | {speedup:.1f} | "
              f"{plain['peak_mb']:.0f} | {fused['peak_mb']:.0f} | {saving:.1f} |", flush=True)


if __name__ == "__main__":
    main()
