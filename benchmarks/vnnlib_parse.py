"""VNN-LIB 1.0 parse time on the largest shared property files.

    python -m verifier.benchmarks.vnnlib_parse [FILE ...] [--count N] [--repeat N]

For each file (default: the largest .vnnlib file of each shared folder, the `--count` largest
of those): the median seconds of `parse_file` over `--repeat` runs, and its ratio to the
baseline measured in the same run, reading the file and splitting it into whitespace tokens (the
least work any parser does). The target is under a second for every shared file on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from verifier.benchmarks.paths import shared_root


def largest_files(root: Path, count: int) -> list[Path]:
    """The largest .vnnlib file of each folder under root, the `count` largest of those first."""
    largest: dict[Path, Path] = {}
    for path in root.rglob("*.vnnlib"):
        best = largest.get(path.parent)
        if best is None or path.stat().st_size > best.stat().st_size:
            largest[path.parent] = path
    return sorted(largest.values(), key=lambda p: p.stat().st_size, reverse=True)[:count]


def _median_seconds(work, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tokenize(path: Path) -> None:
    path.read_text().replace("(", " ( ").replace(")", " ) ").split()


def main(argv: list[str] | None = None) -> int:
    from verifier.vnnlib import parse_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    files = args.files
    if not files:
        root = shared_root() / "benchmarks"
        if not root.exists():
            print(f"the shared benchmarks are absent ({root}); name files instead", file=sys.stderr)
            return 2
        files = largest_files(root, args.count)
    print(f"{'file':<72} {'MB':>6} {'parse s':>8} {'tokens s':>9} {'ratio':>6}")
    for path in files:
        parse = _median_seconds(lambda path=path: parse_file(path), args.repeat)
        tokens = _median_seconds(lambda path=path: _tokenize(path), args.repeat)
        size = path.stat().st_size / 1e6
        print(f"{str(path)[-72:]:<72} {size:6.2f} {parse:8.3f} {tokens:9.3f} {parse / tokens:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
