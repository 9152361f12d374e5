"""The `verify` command: `verify MODEL PROP` decides one instance; sub-commands do the rest.

Exit codes: 0 a verdict (the last stdout line), 1 an internal error (`error`), 2 a user error
(one line on stderr naming the file or value and the problem). `verify check` exits 0 when the
counterexample is valid, 1 when it is not, 2 for a user error and 3 for an internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from verifier import __version__
from verifier.arguments import (
    USER_ERROR,
    Parser,
    add_verbosity,
    configure_logging,
    input_file,
    non_negative_number,
    output_file,
    seconds,
    setup_torch,
)
from verifier.deadline import Deadline, process_start_time, start_watchdog
from verifier.errors import first_line
from verifier.settings import FAMILIES_FILE, OUTPUT_METHODS

log = logging.getLogger("verifier.cli")
CHECK_INTERNAL_ERROR = 3
# A counterexample with more values than this is summarised on stdout; --results holds it whole.
PRINTED_VALUES = 32

# Sub-command name -> one line of help; `verify --help` lists them in this order.
COMMANDS = {
    "check": "re-check a counterexample file as the competition does (exit 0 valid, 1 invalid)",
    "bounds": "lower and upper bounds of every raw network output over each input box",
    "settings": "every setting: its value for a family, its allowed values and its meaning",
    "suite": "run benchmark suites in batch: workers, time limits, crash-safe results, scoring",
    "suite-report": "score results folders of `verify suite` and compare them in one cactus plot",
    "verify": "decide a VNN-LIB 2.0 query: verify verify QUERY --network NAME=PATH ... (the standard's interface)",
    "supports": "what this verifier supports, by the VNN-LIB 2.0 capability flags (verify supports --help)",
}


def _epilog() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  verify {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "commands (each with its own --help):\n" + "\n".join(lines)


def settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="benchmark family (competition CATEGORY) whose settings apply")
    parser.add_argument("--settings", type=input_file, metavar="FILE.yaml",
                        help=f"family settings file to use instead of {FAMILIES_FILE.name} (same format)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting, e.g. --set branch.split=input (keys: verify settings)")


def verify_parser() -> Parser:
    parser = Parser(prog="verify", description="Verify a VNN-LIB property of an ONNX model: prints sat "
                    "(with a counterexample re-checked by onnxruntime), unsat, unknown or timeout. VNN-LIB 2.0 "
                    "queries: verify verify (and verify --name, verify supports: the standard's interface).",
                    epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    parser.add_argument("property", help="VNN-LIB property")
    parser.add_argument("--timeout", type=seconds, default=None,
                        help="seconds from process start, loading included (default and inf: no limit)")
    parser.add_argument("--results", type=output_file, help="write the verdict (and counterexample) to this file")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (verdict, stage, timings, files, version) as the last line")
    settings_options(parser)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the falsifier's random points")
    add_verbosity(parser)
    parser.add_argument("--version", action="version", version=f"verify {__version__}")
    return parser


def check_parser() -> Parser:
    parser = Parser(prog="verify check", description="Re-check a counterexample file as the competition "
                    "does: exit 0 if the counterexample is valid, 1 if it is not, 2 for a user error, "
                    "3 for an internal error.")
    parser.add_argument("model")
    parser.add_argument("property")
    parser.add_argument("counterexample")
    return parser


def bounds_parser() -> Parser:
    parser = Parser(prog="verify bounds", description="Bounds of every raw network output over each input "
                    "box of a property.")
    parser.add_argument("model")
    parser.add_argument("property")
    parser.add_argument("--method", choices=OUTPUT_METHODS, default="crown")
    parser.add_argument("--eps", type=non_negative_number, default=None,
                        help="bound over the Lp ball of this radius around each input box's centre instead")
    parser.add_argument("--norm", choices=("inf", "2", "1"), default="inf", help="the ball's norm (with --eps)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    add_verbosity(parser)
    return parser


def settings_parser() -> Parser:
    parser = Parser(prog="verify settings", description="List every setting: its value (for --family, "
                    "--settings and --set as given), its allowed values and its meaning.")
    settings_options(parser)
    parser.add_argument("--json", action="store_true", help="the settings tree as one JSON object")
    return parser


def entry() -> None:
    """Console-script entry point: starts the watchdog for `verify` runs with a timeout."""
    start = process_start_time()
    argv = sys.argv[1:]
    if argv and argv[0] == "verify":
        from verifier.solver_interface import watch

        watch(argv[1:], start)
        _exit_at_once(main(argv, start))
    elif argv and argv[0] not in COMMANDS and argv[0] != "--name":
        args = verify_parser().parse_args(argv)
        if args.timeout is not None:
            start_watchdog(Deadline(args.timeout, start), args.results, _timeout_line(args))
        _exit_at_once(main(argv, start))
    sys.exit(main(argv, start))


def _exit_at_once(code: int) -> None:
    """The verdict is out: skip the interpreter's teardown (torch's takes up to a second), so
    that the watchdog, due just after the limit, never sees this process alive (on the vit model
    at --timeout 8 it did, killed the run at 8.44 s and printed a second `timeout`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None, start: float | None = None) -> int:
    """Run the command line `argv`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv, time.time() if start is None else start)
    except SystemExit as stop:  # argparse: --help, --version, or a one-line argument error
        return stop.code if isinstance(stop.code, int) else 0


def _dispatch(argv: list[str], start: float) -> int:
    command = argv[0] if argv else None
    if command in ("verify", "supports", "--name"):
        from verifier import solver_interface

        if command == "--name":
            print(solver_interface.NAME)
            return 0
        if command == "supports":
            return solver_interface.run_supports(argv[1:])
        return solver_interface.run_verify(argv[1:], start)
    if command in ("suite", "suite-report"):
        from verifier.benchmarks.suite import main as suite_main  # batch runs handle their own errors

        return suite_main(argv)
    if command == "check":
        args = check_parser().parse_args(argv[1:])
        configure_logging(0, False, start)
        return _guarded(lambda: _check(args), verbose=False, internal_code=CHECK_INTERNAL_ERROR)
    if command == "bounds":
        args = bounds_parser().parse_args(argv[1:])
        configure_logging(args.verbose, args.quiet, start)
        return _guarded(lambda: _bounds(args), args.verbose)
    if command == "settings":
        args = settings_parser().parse_args(argv[1:])
        return _guarded(lambda: _show_settings(args), verbose=False)
    args = verify_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet, start)
    return _guarded(lambda: _verify(args, start), args.verbose, results=args.results,
                    on_error=(lambda reason: _print_json(args, "error", start, error=reason)) if args.json else None)


def _guarded(action: Callable[[], int], verbose: int, results: str | None = None, internal_code: int = 1,
             on_error: Callable[[str], None] | None = None) -> int:
    """Run `action`; user errors become one line and exit 2, internal ones `error` and `internal_code`."""
    from verifier.errors import UserError
    from verifier.vnnlib import VnnlibError

    try:
        return action()
    except (UserError, VnnlibError) as error:
        print(first_line(error), file=sys.stderr)
        _write_error(results)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place where internal failures become `error`
        if verbose:
            traceback.print_exc()
        reason = f"internal error: {type(error).__name__}: {first_line(error)}"
        print(reason, file=sys.stderr)
        _write_error(results)
        if on_error is not None:
            on_error(reason)
        elif internal_code == 1:
            print("error")
        return internal_code


def _write_error(results: str | None) -> None:
    if results:
        from verifier.witness import write_results

        with contextlib.suppress(OSError):
            write_results(results, "error")


def load_cli_settings(args: argparse.Namespace):
    """The settings of `--family` from `--settings` (or the shipped file), then `--set`."""
    from verifier.settings import family_settings, known_families, override

    path = Path(args.settings) if args.settings else FAMILIES_FILE
    known = known_families(path)
    if args.family and args.family not in known:
        log.warning("--family %s: %s has no settings for it, so the defaults apply (families there: %s)",
                    args.family, path, ", ".join(known) or "none")
    return override(family_settings(args.family, path), args.overrides)


def _verify(args: argparse.Namespace, start: float) -> int:
    from verifier.verify import verify_instance
    from verifier.witness import write_results

    deadline = Deadline(args.timeout, start)
    settings = load_cli_settings(args)
    setup_torch(args.device)
    outcome = verify_instance(args.model, args.property, settings, deadline, args.device, args.seed)
    if args.results:
        write_results(args.results, outcome.verdict, outcome.counterexample)
    if args.json:
        _print_json(args, outcome.verdict, start, outcome.decided_by, outcome.timings,
                    counterexample=args.results if outcome.counterexample is not None else None)
        return 0
    if outcome.counterexample is not None:
        _print_counterexample(outcome.counterexample, args.results)
    print(outcome.verdict)
    return 0


def _print_counterexample(example, results: str | None) -> None:
    """The whole assignment when it is short; else a summary, and where the whole one is."""
    import numpy as np

    from verifier.witness import format_assignment

    if example.inputs.size + example.outputs.size <= PRINTED_VALUES:
        print(format_assignment(example), end="")
        return
    shown = ", ".join(f"{float(v):.6g}" for v in example.outputs[:10])
    more = ", ..." if example.outputs.size > 10 else ""
    print(f"counterexample in input box {example.case}, disjunct {example.disjunct}: {example.inputs.size} inputs "
          f"in [{float(np.min(example.inputs)):.6g}, {float(np.max(example.inputs)):.6g}], "
          f"{example.outputs.size} outputs [{shown}{more}]")
    print(f"full assignment in {results}" if results else "(--results FILE writes the full assignment)")


def _timeout_line(args: argparse.Namespace) -> bytes:
    """What the watchdog prints when it stops the run."""
    if not args.json:
        return b"timeout\n"
    report = _json_report(args, "timeout", None, "watchdog", {}, None)
    return (json.dumps(report) + "\n").encode()


def _json_report(args: argparse.Namespace, verdict: str, seconds_taken: float | None, decided_by: str,
                 timings: dict[str, float], counterexample: str | None, error: str | None = None) -> dict:
    report = {"verdict": verdict, "decided_by": decided_by, "seconds": seconds_taken,
              "timings": {stage: round(value, 6) for stage, value in timings.items()},
              "counterexample": counterexample, "results": args.results, "model": args.model,
              "property": args.property, "version": __version__}
    if error is not None:
        report["error"] = error
    return report


def _print_json(args: argparse.Namespace, verdict: str, start: float, decided_by: str = "",
                timings: dict[str, float] | None = None, counterexample: str | None = None,
                error: str | None = None) -> None:
    report = _json_report(args, verdict, round(time.time() - start, 6), decided_by, timings or {},
                          counterexample, error)
    print(json.dumps(report))


def _check(args: argparse.Namespace) -> int:
    from verifier.check import check_counterexample
    from verifier.vnnlib import parse_file

    result = check_counterexample(args.model, parse_file(args.property), args.counterexample)
    print(("the counterexample is valid: " if result.valid else "the counterexample is invalid: ") + result.reason)
    return 0 if result.valid else 1


def _bounds(args: argparse.Namespace) -> int:
    from verifier.output_bounds import output_bounds

    setup_torch(args.device)
    report = output_bounds(args.model, args.property, args.method, args.device, args.eps, float(args.norm))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"method {report['method']}, {report['seconds']:.4f} s")
    if report["unbounded"]:
        print(f"unsupported operators, bounded by (-inf, inf): {report['unbounded']}")
    for index, case in enumerate(report["cases"]):
        print(f"input box {index}:")
        for j, (low, high) in enumerate(zip(case["lower"], case["upper"])):
            print(f"  Y_{j}: [{low:.9g}, {high:.9g}]")
    return 0


def _show_settings(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from verifier.settings import describe

    configure_logging(0, False)
    settings = load_cli_settings(args)
    if args.json:
        print(json.dumps(asdict(settings)))
        return 0
    rows = describe(settings)
    width = max(len(name) for name, *_ in rows)
    for name, value, allowed, meaning in rows:
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        print(f"{name:<{width}}  {shown:<12} {allowed:<28} {meaning}")
    return 0


if __name__ == "__main__":
    entry()
