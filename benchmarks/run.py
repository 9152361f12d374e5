"""Run instances through `verify`, one process each, and judge the answers against known verdicts.

    python -m benchmarks.run SUITE_DIR_OR_CSV ... [--sample FILE] [--cap S] [--out DIR]
                             [--truth sat|unsat] [--set KEY=VALUE ...]

Every instance runs as `verify MODEL PROP --family SUITE --timeout min(csv, cap)`; the results CSV
is appended (and fsynced) row by row; every `sat` is re-checked with `verify check`; the table at
the end counts answers and judgements per suite (rules: benchmarks/scoring.py).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.instances import Instance, find_suite_csv, read_sample, read_suite
from benchmarks.paths import groundtruth_root, suites_root
from benchmarks.scoring import judge, load_truth, points

FIELDS = ["suite", "onnx", "vnnlib", "timeout", "verdict", "seconds", "counterexample", "check", "truth", "judgement"]
KILL_GRACE = 10.0


def verify_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "verifier.cli", *args]


def run_one(instance: Instance, cap: float, out: Path, extra: list[str]) -> dict:
    timeout = min(instance.timeout, cap)
    safe = f"{instance.suite}-{len(list(out.glob('*.txt'))):04d}"
    results = out / f"{safe}.txt"
    command = verify_command(str(instance.onnx_path), str(instance.vnnlib_path), "--family", instance.suite,
                             "--timeout", str(timeout), "--results", str(results), *extra)
    start = time.time()
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout + KILL_GRACE)
        verdict = results.read_text().split("\n", 1)[0].strip() if results.exists() else "error"
        if verdict == "error":  # keep what the verifier said, for the record
            (out / f"{safe}.err").write_text(done.stderr[-4000:])
    except subprocess.TimeoutExpired:
        verdict = "timeout"
    seconds = time.time() - start
    check = ""
    if verdict == "sat":
        checked = subprocess.run(verify_command("check", str(instance.onnx_path), str(instance.vnnlib_path),
                                                str(results)), capture_output=True, text=True)
        check = "valid" if checked.returncode == 0 else "invalid"
    return {"verdict": verdict, "seconds": f"{seconds:.2f}", "counterexample": results.name if verdict == "sat" else "",
            "check": check, "timeout": f"{timeout:g}"}


def summarize(rows: list[dict]) -> str:
    suites = sorted({r["suite"] for r in rows})
    header = (f"{'suite':16s} {'n':>4s} {'sat':>4s} {'unsat':>5s} {'unkn':>4s} {'tout':>4s} {'err':>4s} "
              f"{'correct':>7s} {'wrong':>5s} {'unjdg':>5s} {'find':>4s} {'points':>6s} {'median s':>8s} {'max s':>6s}")
    lines = [header, "-" * len(header)]
    for suite in suites + ["total"]:
        group = [r for r in rows if suite == "total" or r["suite"] == suite]

        def count(key: str, value: str, group: list[dict] = group) -> int:
            return sum(1 for r in group if r[key] == value)

        times = [float(r["seconds"]) for r in group]
        lines.append(
            f"{suite:16s} {len(group):4d} {count('verdict', 'sat'):4d} {count('verdict', 'unsat'):5d} "
            f"{count('verdict', 'unknown'):4d} {count('verdict', 'timeout'):4d} {count('verdict', 'error'):4d} "
            f"{count('judgement', 'correct'):7d} {count('judgement', 'wrong'):5d} "
            f"{count('judgement', 'unjudged'):5d} {count('judgement', 'finding'):4d} "
            f"{points([r['judgement'] for r in group]):6d} {statistics.median(times):8.2f} {max(times):6.2f}")
    return "\n".join(lines)


def collect(args) -> list[Instance]:
    instances: list[Instance] = []
    if args.sample:
        instances += read_sample(Path(args.sample), suites_root())
    for source in args.sources:
        path = Path(source)
        instances += read_suite(find_suite_csv(path) if path.is_dir() else path)
    return instances


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="suite folders or instances CSV files")
    parser.add_argument("--sample", help="a sample file of suite,onnx,vnnlib,timeout rows")
    parser.add_argument("--cap", type=float, default=float("inf"), help="per-instance time cap in seconds")
    parser.add_argument("--out", default="results/run", help="folder for results.csv and counterexamples")
    parser.add_argument("--truth", choices=("sat", "unsat"), help="only rows with this known verdict")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="passed to verify --set")
    args = parser.parse_args(argv)
    truth = load_truth(groundtruth_root()) if groundtruth_root().exists() else {}
    instances = collect(args)
    if args.truth:
        instances = [i for i in instances if truth.get(i.key) and truth[i.key].verdict == args.truth]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [item for pair in args.overrides for item in ("--set", pair)]
    rows = []
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for number, instance in enumerate(instances, 1):
            row = {"suite": instance.suite, "onnx": instance.onnx, "vnnlib": instance.vnnlib}
            row.update(run_one(instance, args.cap, out, extra))
            known = truth.get(instance.key)
            row["truth"] = known.verdict if known else ""
            row["judgement"] = judge(row["verdict"], known, row["check"] == "valid" if row["check"] else None)
            writer.writerow(row)
            handle.flush()
            os.fsync(handle.fileno())
            rows.append(row)
            print(f"[{number}/{len(instances)}] {instance.suite} {instance.onnx} {instance.vnnlib}: "
                  f"{row['verdict']} ({row['seconds']} s) {row['judgement']}", flush=True)
    table = summarize(rows)
    (out / "summary.txt").write_text(table + "\n")
    print(table)
    wrong = [r for r in rows if r["judgement"] == "wrong"]
    for r in wrong:
        print(f"WRONG: {r['suite']} {r['onnx']} {r['vnnlib']}: {r['verdict']} (known {r['truth']})")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
