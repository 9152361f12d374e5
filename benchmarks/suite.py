"""`verify suite` runs benchmark suites in batch; `verify suite-report` scores and compares results folders.

    verify suite DIR [DIR ...] [--sample FILE] [--jobs N] [--cap S] [--scale F] [--out DIR] [--resume]
                 [--set KEY=VALUE ...] [--truth DIR_OR_CSV|none] [--rules 2021|2023] [--memory-cap MB]
    verify suite-report DIR [DIR ...] [--truth DIR_OR_CSV|none] [--rules 2021|2023] [--plot FILE.png]
                        [--markdown FILE.md]

Exit codes: 0 done, 1 a wrong answer (or a worker that cannot start), 2 a user error, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from verifier.arguments import (
    Parser,
    input_file,
    non_negative_number,
    output_file,
    positive_integer,
    positive_number,
)
from verifier.benchmarks.instances import collect
from verifier.benchmarks.paths import groundtruth_root, suites_root
from verifier.benchmarks.progress import make_display
from verifier.benchmarks.results import RESULTS_CSV, ResultsStore
from verifier.benchmarks.runner import Hooks, RunOptions, SuiteRun, family_settings
from verifier.benchmarks.scoring import Truth, load_truth
from verifier.benchmarks.suite_report import plot_runs, score_folder, score_rows, show, summary_markdown
from verifier.benchmarks.workers import WorkerStartError
from verifier.errors import UserError, first_line

SUMMARY = "summary.md"
PLOT = "cactus.png"
LOG_WIDTH = 160  # tables printed to a log or CI are not cut to 80 columns


def _truth_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", help="known verdicts: a folder of <suite>.csv files or one such CSV, or 'none' "
                        "(default: the shared ground truth when present)")
    parser.add_argument("--rules", choices=("2021", "2023"), default="2021",
                        help="points for a wrong answer: -100 (2021) or -150 (2023)")


def suite_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="verify suite", description="Run benchmark suites: each instance in a "
                                     "long-lived worker with its CSV timeout, answers scored as they come.")
    parser.add_argument("sources", nargs="*", metavar="DIR",
                        help="suite folders (with an *instances.csv), folders of suites, or instances CSV files")
    parser.add_argument("--sample", help="a file of suite,onnx,vnnlib,timeout rows (e.g. benchmarks/sample.csv)")
    parser.add_argument("--suites-root", default=str(suites_root()), help="where the suites of --sample live")
    parser.add_argument("--jobs", type=positive_integer, default=1, help="instances run in parallel (default 1)")
    parser.add_argument("--cap", type=positive_number, default=float("inf"), help="cap each timeout at S seconds")
    parser.add_argument("--scale", type=positive_number, default=1.0, help="multiply each CSV timeout by F")
    parser.add_argument("--grace", type=non_negative_number, default=2.0,
                        help="seconds past the limit before a worker is killed")
    parser.add_argument("--memory-cap", type=positive_number, default=8192.0, metavar="MB",
                        help="kill an instance whose worker holds more resident memory (default 8192 MB)")
    parser.add_argument("--out", default="results/run", help="results folder (default results/run)")
    parser.add_argument("--resume", action="store_true", help="keep the folder's results; run only what is missing")
    parser.add_argument("--settings", type=input_file, metavar="FILE.yaml",
                        help="family settings file to use instead of verifier/families.yaml (same format)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting for every suite, e.g. --set alpha.iterations=40 "
                        "(keys: verify settings)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help="run the --jobs slots in Ray actors: 'auto' (the running cluster), 'local' (a new "
                        "one on this machine) or a Ray address; needs pip install -e \".[cluster]\"")
    _truth_option(parser)
    return parser


def report_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="verify suite-report", description="Score results folders of "
                                     "`verify suite` and compare them in one cactus plot.")
    parser.add_argument("folders", nargs="+", metavar="DIR", help="results folders (each with a results.csv)")
    parser.add_argument("--plot", type=output_file, help="write the cactus plot (one line per folder) to this PNG")
    parser.add_argument("--markdown", type=output_file, help="write the summary tables to this markdown file")
    _truth_option(parser)
    return parser


def main(argv: list[str], hooks: Hooks | None = None) -> int:
    """Run `suite ...` or `suite-report ...` (argv[0] names which); returns the exit code."""
    try:
        if argv[0] == "suite-report":
            return _report(report_parser().parse_args(argv[1:]))
        return _run(suite_parser().parse_args(argv[1:]), hooks or Hooks())
    except UserError as error:
        print(first_line(error), file=sys.stderr)
        return 2
    except WorkerStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except SystemExit as stop:  # argparse: --help, or a one-line argument error
        return stop.code if isinstance(stop.code, int) else 0


def _consoles() -> tuple[Console, Console]:
    out, errors = Console(), Console(stderr=True)
    return (out if out.is_terminal else Console(width=LOG_WIDTH),
            errors if errors.is_terminal else Console(stderr=True, width=LOG_WIDTH))


def _load_truth(option: str | None) -> dict[tuple[str, str, str], Truth]:
    if option == "none":
        return {}
    if option:
        return load_truth(Path(option))
    return load_truth(groundtruth_root()) if groundtruth_root().is_dir() else {}


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(args.jobs, args.cap, args.scale, args.grace, args.memory_cap, tuple(args.overrides),
                      args.settings, args.device, args.seed, args.cluster)


def _run(args: argparse.Namespace, hooks: Hooks) -> int:
    if not args.sources and not args.sample:
        raise UserError("verify suite", "name at least one suite folder, or --sample FILE")
    options = _options(args)
    instances = collect([Path(s) for s in args.sources], Path(args.sample) if args.sample else None,
                        Path(args.suites_root))
    if not instances:
        raise UserError(args.sample or args.sources[0], "no instances to run")
    settings = family_settings(instances, options)
    truth = _load_truth(args.truth)
    store = ResultsStore(Path(args.out), args.resume, hooks.write)
    console, errors = _consoles()
    try:
        run = SuiteRun(instances, store, options, settings, truth, hooks)
        run.run(make_display(run.state, console))
    except KeyboardInterrupt:
        kept = len(store.rows)
        print(f"interrupted: {kept} result{'s' * (kept != 1)} kept in {store.path}; continue with --resume",
              file=sys.stderr)
        return 130
    finally:
        store.close()
    scored = score_rows(store.folder.name, store.folder, store.rows, truth, args.rules)
    (store.folder / SUMMARY).write_text(summary_markdown(scored, args.rules))
    plot_runs([scored], store.folder / PLOT)
    wrong = show([scored], truth, args.rules, console, errors)
    console.print(f"results {store.folder / RESULTS_CSV}, summary {store.folder / SUMMARY}, "
                  f"cactus plot {store.folder / PLOT}", markup=False, highlight=False, soft_wrap=True)
    return 1 if wrong else 0


def _report(args: argparse.Namespace) -> int:
    truth = _load_truth(args.truth)
    scored = [score_folder(Path(folder), truth, args.rules) for folder in args.folders]
    console, errors = _consoles()
    if args.markdown:
        Path(args.markdown).write_text("\n".join(summary_markdown(one, args.rules) for one in scored))
    if args.plot:
        plot_runs(scored, Path(args.plot))
    wrong = show(scored, truth, args.rules, console, errors)
    return 1 if wrong else 0
