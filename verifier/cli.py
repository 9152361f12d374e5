"""The `verify` command.

    verify MODEL PROP [--timeout S] [--results FILE] [--family NAME] [--device cpu|cuda]
                      [--seed N] [--set KEY=VALUE ...] [-v]
    verify check MODEL PROP CE_FILE
    verify bounds MODEL PROP --method ibp|crown|alpha-crown [--json]
    verify suite DIR [DIR ...] [--jobs N] [--cap S] [--out DIR] [--resume] ...   (see benchmarks/suite.py)
    verify suite-report DIR [DIR ...] [--plot FILE.png]

Exit codes: 0 a verdict (the last stdout line), 1 an internal error (`error`), 2 a user error
(one line on stderr naming the file and the problem).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback

from verifier.deadline import Deadline, process_start_time, start_watchdog
from verifier.settings import BOUND_METHODS

VERSION = "0.1.0"
SUBCOMMANDS = ("check", "bounds", "suite", "suite-report")


def _verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verify", description="Verify a VNN-LIB property of an ONNX model.")
    parser.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    parser.add_argument("property", help="VNN-LIB property")
    parser.add_argument("--timeout", type=float, default=None, help="seconds from process start (default: none)")
    parser.add_argument("--results", help="write the verdict (and counterexample) to this file")
    parser.add_argument("--family", help="benchmark family (competition CATEGORY) selecting per-family settings")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting of the family (see verifier/families.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr, tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"verify {VERSION}")
    return parser


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verify check", description="Re-check a counterexample file "
                                     "as the competition does (exit 0 if it holds, 1 if not).")
    parser.add_argument("model")
    parser.add_argument("property")
    parser.add_argument("counterexample")
    return parser


def _bounds_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verify bounds", description="Bounds of every raw network output "
                                     "over each input box of a property.")
    parser.add_argument("model")
    parser.add_argument("property")
    parser.add_argument("--method", choices=BOUND_METHODS, default="crown")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def entry() -> None:
    """Console-script entry point: starts the watchdog for `verify` runs with a timeout."""
    start = process_start_time()
    argv = sys.argv[1:]
    if argv and argv[0] not in SUBCOMMANDS:
        args = _verify_parser().parse_args(argv)
        if args.timeout is not None:
            start_watchdog(Deadline(args.timeout, start), args.results)
    sys.exit(main(argv, start))


def main(argv: list[str] | None = None, start: float | None = None) -> int:
    """Run the command line `argv`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    start = time.time() if start is None else start
    if argv and argv[0] == "check":
        return _run_guarded(lambda: _check(_check_parser().parse_args(argv[1:])), verbose=False)
    if argv and argv[0] in ("suite", "suite-report"):
        return _suite(argv)
    if argv and argv[0] == "bounds":
        args = _bounds_parser().parse_args(argv[1:])
        return _run_guarded(lambda: _bounds(args), verbose=args.verbose)
    args = _verify_parser().parse_args(argv)
    return _run_guarded(lambda: _verify(args, start), verbose=args.verbose, results=args.results)


def _suite(argv: list[str]) -> int:
    # Batch runs live with the benchmark tools; they handle their own errors and exit codes.
    from verifier.benchmarks.suite import main as suite_main

    return suite_main(argv)


def _run_guarded(action, verbose: bool, results: str | None = None) -> int:
    from verifier.errors import UserError
    from verifier.vnnlib import VnnlibError

    try:
        return action()
    except (UserError, VnnlibError) as error:
        print(str(error).splitlines()[0], file=sys.stderr)
        _write_error(results)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place where internal failures become `error`
        if verbose:
            traceback.print_exc()
        message = str(error).strip().splitlines()
        print(f"internal error: {type(error).__name__}: {message[0] if message else ''}", file=sys.stderr)
        _write_error(results)
        print("error")
        return 1


def _write_error(results: str | None) -> None:
    if results:
        from verifier.witness import write_results

        with contextlib.suppress(OSError):
            write_results(results, "error")


def _settings(args):
    from verifier.settings import load_settings, override

    return override(load_settings(args.family), args.overrides)


def _verify(args, start: float) -> int:
    import torch

    from verifier.verify import verify_instance
    from verifier.witness import format_assignment, write_results

    deadline = Deadline(args.timeout, start)
    settings = _settings(args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.device == "cuda" and not torch.cuda.is_available():
        from verifier.errors import UserError

        raise UserError(args.model, "--device cuda was given but no CUDA device is available")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    log = (lambda message: print(f"[{deadline.elapsed():7.2f}s] {message}", file=sys.stderr)) \
        if args.verbose else (lambda message: None)
    outcome = verify_instance(args.model, args.property, settings, deadline, args.device, args.seed, log)
    if args.results:
        write_results(args.results, outcome.verdict, outcome.counterexample)
    if outcome.counterexample is not None:
        print(format_assignment(outcome.counterexample), end="")
    print(outcome.verdict)
    return 0


def _check(args) -> int:
    from verifier.check import check_counterexample
    from verifier.vnnlib import parse_file

    result = check_counterexample(args.model, parse_file(args.property), args.counterexample)
    print(("valid: " if result.valid else "invalid: ") + result.reason)
    return 0 if result.valid else 1


def _bounds(args) -> int:
    import json

    from verifier.report import output_bounds

    report = output_bounds(args.model, args.property, args.method, args.device)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"method {report['method']}, {report['seconds']:.4f} s")
    for index, case in enumerate(report["cases"]):
        print(f"input box {index}:")
        for j, (low, high) in enumerate(zip(case["lower"], case["upper"])):
            print(f"  Y_{j}: [{low:.9g}, {high:.9g}]")
    return 0


if __name__ == "__main__":
    entry()
