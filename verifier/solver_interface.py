"""The VNN-LIB 2.0 solver interface (chapter 5 of the standard): `verify verify`, `verify supports`.

`verify verify QUERY --network NAME=PATH ... [--timeout SECONDS]` prints the verdict on stdout
line 1 (`sat`, `unsat`, `unknown` or `timed-out`), then for `sat` every declared tensor of every
network in declaration order: a header `NAME TYPE [d1,d2]` and one value per line, row-major.
Logs go to stderr. The errors of section 5.3.2 (network mappings, element types, types that
cannot be analysed soundly) and bad queries print one line on stderr and exit 2, with nothing on
stdout. A model the engine cannot bound (an unsupported operator) is `unknown`, said on stderr.

The timeout counts from process start; the answer is due TIMEOUT_MARGIN seconds before it,
because callers (the standard's test suite among them) kill the solver at the limit itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

from verifier.arguments import USER_ERROR, Parser, add_verbosity, configure_logging, input_file, setup_torch
from verifier.cli import load_cli_settings, settings_options
from verifier.deadline import WATCHDOG_GRACE, Deadline, start_watchdog
from verifier.errors import first_line

log = logging.getLogger("verifier.solver_interface")
NAME = "vnn-verifier (IBP, CROWN, alpha-CROWN, branch and bound)"
# seconds before the limit by which the verdict is printed (interpreter exit and pipes included)
TIMEOUT_MARGIN = 0.8
VNNLIB_VERSIONS = ("2.0", "2.0")
OPSET_VERSIONS = (7, 20)
# what the engine answers for, by the theory names of chapter 4 (every one listed, not only the largest)
THEORIES = {
    "--hidden-node-theories": ["NH", "H"],
    "--multiple-input-output-theories": ["SIO", "MIO"],
    "--multiple-inputs-output-theories": ["SIO", "MIO"],  # the spelling of the standard's example
    "--multiple-network-theories": ["SNET", "MENET", "MINET", "MNET"],
    "--multiple-node-comparison-theories": ["SNC", "MNC"],
    "--arithmetic-complexity-theories": ["BND", "OUTC", "LIN", "POLY"],
}
BOOLEANS = {"--optimised-disjunctive-reasoning": False, "--serialise-assignments": False, "--unsat-proofs": False}
FLAGS = ("--onnx-opset-versions", "--onnx-element-types", "--onnx-operators", "--vnnlib-versions",
         *THEORIES, *BOOLEANS, "--onnx-operators-unsat-proofs")


def verify_parser() -> Parser:
    parser = Parser(prog="verify verify", description="Decide a VNN-LIB 2.0 query (the standard's solver "
                    "interface): the verdict on stdout line 1, then the assignment for sat.")
    parser.add_argument("query", type=input_file, help="VNN-LIB 2.0 query")
    parser.add_argument("--network", action="append", default=[], metavar="NAME=PATH",
                        help="the ONNX model of a declared network (every one that is not equal-to another)")
    parser.add_argument("--timeout", type=_seconds, default=None, help="seconds from process start (may be a fraction)")
    settings_options(parser)
    add_verbosity(parser)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the timeout must be positive, not {text}")
    return value


def network_mappings(items: list[str]) -> dict[str, str]:
    from verifier.compose import QueryError

    paths: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise QueryError(f"--network {item}", "expected NAME=PATH")
        if name in paths:
            raise QueryError(f"--network {name}", "given twice")
        if not os.path.isfile(path):
            raise QueryError(path, "no such file")
        paths[name] = path
    return paths


def watch(argv: list[str], start: float) -> None:
    """For the console script: a watchdog that stops a stuck `verify verify` run just before the
    caller's limit, printing `timed-out` (see deadline.start_watchdog)."""
    args = verify_parser().parse_args(argv)
    if args.timeout is not None:
        start_watchdog(Deadline(max(0.1, args.timeout - WATCHDOG_GRACE - 0.3), start), None, b"timed-out\n")


def run_verify(argv: list[str], start: float) -> int:
    """`verify verify ...`; returns the exit code."""
    args = verify_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet, start)
    from verifier.errors import ModelError, UserError
    from verifier.vnnlib import VnnlibError

    try:
        verdict, lines = decide(args, start)
    except ModelError as error:  # a model the engine cannot bound: no guess
        print(f"{first_line(error)}: answering unknown", file=sys.stderr)
        verdict, lines = "unknown", []
    except (UserError, VnnlibError) as error:  # 5.3.2 errors (QueryError) and bad queries
        print(first_line(error), file=sys.stderr)
        return USER_ERROR
    except Exception as error:  # noqa: BLE001 - an internal failure is never a guess: unknown, exit 1
        if args.verbose:
            traceback.print_exc()
        print(f"internal error: {type(error).__name__}: {first_line(error)}", file=sys.stderr)
        print("unknown", flush=True)
        return 1
    print("\n".join([verdict, *lines]), flush=True)
    return 0


def decide(args: argparse.Namespace, start: float) -> tuple[str, list[str]]:
    """The verdict of a query and, for sat, the assignment's lines."""
    from verifier.compose import check_types, compose, evaluate, input_types, model_paths, read_networks
    from verifier.verify import verify_instance
    from verifier.vnnlib import read_query

    query = read_query(args.query)
    check_types(query)
    paths = model_paths(query, network_mappings(args.network))
    models = read_networks(query, paths)
    prop, observables = query.compile(input_types(query, models))
    deadline = Deadline(None if args.timeout is None else args.timeout - TIMEOUT_MARGIN, start)
    settings = load_cli_settings(args)
    setup_torch("cpu")
    import onnx

    with tempfile.TemporaryDirectory(prefix="verify-query-") as folder:
        composed = os.path.join(folder, f"{Path(args.query).stem}.onnx")
        onnx.save(compose(query, observables, models, paths), composed)
        outcome = verify_instance(composed, prop, settings, deadline)
    if outcome.verdict == "timeout":
        return "timed-out", []
    if outcome.verdict != "sat":
        return outcome.verdict, []
    values = evaluate(query, models, outcome.counterexample.inputs)
    if not query.holds(values):  # the composed model said yes, the networks on their own say no
        log.warning("the counterexample of the composed model does not hold on the networks themselves")
        return "unknown", []
    return "sat", assignment(query, values)


def assignment(query, values) -> list[str]:
    """Every declared tensor, in declaration order: `NAME TYPE [d1,d2]`, then its values row-major."""
    lines = []
    for network in query.networks:
        for tensor in network.tensors:
            lines.append(f"{tensor.name} {tensor.dtype} [{','.join(map(str, tensor.shape))}]")
            lines.extend(_number(v) for v in values[tensor.name].tolist())
    return lines


def _number(value) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def run_supports(argv: list[str]) -> int:
    """`verify supports FLAG`: the answer, one item per line."""
    if argv in (["-h"], ["--help"]):
        print("usage: verify supports FLAG\n\nWhat this verifier supports, as the VNN-LIB 2.0 capability flags ask.\n"
              "FLAG: " + ", ".join(FLAGS))
        return 0
    if len(argv) != 1 or argv[0] not in FLAGS:
        shown = " ".join(argv) or "nothing"
        print(f"verify supports: expected one of {', '.join(FLAGS)}; got {shown}", file=sys.stderr)
        return USER_ERROR
    flag = argv[0]
    if flag == "--onnx-opset-versions":
        lines = [str(v) for v in OPSET_VERSIONS]
    elif flag == "--vnnlib-versions":
        lines = list(VNNLIB_VERSIONS)
    elif flag == "--onnx-element-types":
        from verifier.compose import SOUND_TYPES

        lines = [*SOUND_TYPES, "real"]
    elif flag == "--onnx-operators":
        from verifier.bounds import supported_onnx_ops

        lines = sorted(supported_onnx_ops() | {"Constant", "Shape", "ConstantOfShape"})
    elif flag in THEORIES:
        lines = THEORIES[flag]
    elif flag in BOOLEANS:
        lines = [str(BOOLEANS[flag]).lower()]
    else:  # operators with unsat proofs: none (no proofs are written)
        lines = []
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0
