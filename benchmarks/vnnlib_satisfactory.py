"""The VNN-LIB 2.0 standard's own test suite (vnnlib-satisfactory) against `verify`, in minutes.

    pip install vnnlib-satisfactory==1.0.1        # in any environment; it brings onnxscript and typer
    python -m benchmarks.vnnlib_satisfactory [--tool PATH/vnnlib-satisfactory] [--work DIR] [--timeout 5.0]

It runs `vnnlib-satisfactory run --solver VERIFY --timeout T` in DIR (the suite writes its
models, queries and report under DIR/.vnnlib-satisfactory), then the three `compliance`
checks, and prints pass, fail, suspect, error and skip per test category from the report, the
total, and every test that did not pass with its outcome. VERIFY is the `verify` script beside
this Python. The suite kills the solver at T seconds, startup included, so the figures depend on
the machine being otherwise idle. Exit code: 0 when no test failed (a wrong verdict).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

OUTCOMES = ("pass", "fail", "suspect", "error", "skip")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", default=shutil.which("vnnlib-satisfactory"),
                        help="the vnnlib-satisfactory executable (default: the one on PATH)")
    parser.add_argument("--work", default="vnnlib-satisfactory-run", help="folder the suite runs in")
    parser.add_argument("--timeout", default="5.0", help="seconds per test, as the suite passes it on")
    args = parser.parse_args(argv)
    if not args.tool or not Path(args.tool).exists():
        print("vnnlib-satisfactory not found: pip install vnnlib-satisfactory==1.0.1, or give --tool", file=sys.stderr)
        return 2
    verify = Path(sys.executable).with_name("verify")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([args.tool, "run", "--solver", str(verify), "--timeout", args.timeout],
                         cwd=work, capture_output=True, text=True)
    (work / "run.log").write_text(run.stdout + run.stderr)
    report = json.loads((work / ".vnnlib-satisfactory" / "report.json").read_text())
    counts: dict[str, Counter] = defaultdict(Counter)
    for result in report["results"]:
        counts[result["category"]][result["outcome"]] += 1
    for skipped in report["skipped"]:
        counts[skipped["category"]]["skip"] += 1
    print(f"{'category':<22}" + "".join(f"{o:>8}" for o in OUTCOMES))
    total: Counter = Counter()
    for category in sorted(counts):
        total.update(counts[category])
        print(f"{category:<22}" + "".join(f"{counts[category][o]:>8}" for o in OUTCOMES))
    print(f"{'total':<22}" + "".join(f"{total[o]:>8}" for o in OUTCOMES))
    for result in report["results"]:
        if result["outcome"] != "pass":
            print(f"  {result['outcome']:<8} {result['test_id']}: expected {result['expected']}, "
                  f"got {result['actual']}; {result['stderr'].strip().splitlines()[-1:] or ''}")
    for check in ("opset", "vnnlib", "serialise-assignments"):
        compliance = subprocess.run([args.tool, "compliance", check, "--solver", str(verify)], cwd=work,
                                    capture_output=True, text=True)
        lines = (compliance.stdout + compliance.stderr).strip().splitlines()
        print(f"compliance {check}: exit {compliance.returncode}: {lines[-1] if lines else ''}")
    return 0 if total["fail"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
