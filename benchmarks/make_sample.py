"""Write benchmarks/sample.csv: every k-th instance of each 2021 suite, k = ceil(rows / 10).

    python -m verifier.benchmarks.make_sample

The sample is the fixed set that issues compare against; regenerate it only on purpose.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from verifier.benchmarks.instances import find_suite_csv, read_suite
from verifier.benchmarks.paths import suites_root

PER_SUITE = 10
SAMPLE = Path(__file__).resolve().parent / "sample.csv"


def main() -> None:
    rows = []
    for folder in sorted(p for p in suites_root().iterdir() if p.is_dir()):
        instances = read_suite(find_suite_csv(folder))
        step = max(1, math.ceil(len(instances) / PER_SUITE))
        rows += [(i.suite, i.onnx, i.vnnlib, f"{i.timeout:g}") for i in instances[::step]]
    with open(SAMPLE, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    print(f"{len(rows)} instances written to {SAMPLE}")


if __name__ == "__main__":
    main()
