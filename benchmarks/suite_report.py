"""Scoring results folders: summary tables (terminal and markdown), wrong answers shown loudly, plots."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from verifier.benchmarks.results import COUNTEREXAMPLES, RESULTS_CSV, read_rows, row_key
from verifier.benchmarks.scoring import COLUMNS, Tally, Truth, judge_row, tally
from verifier.errors import UserError

HEADER = ("suite", "instances", *COLUMNS, "points", "median s")
# Short headings keep the terminal table within 100 columns; the caption spells them out.
SHORT_HEADER = ("suite", "n", "sat", "unsat", "ok\nsat", "ok\nunsat", "wrong", "find", "unjdg", "unkn", "tout", "err",
                "points", "median\ns")
CAPTION = "ok: correct, find: checked sat on a known-unsat row, unjdg: unjudged, unkn: unknown, tout: timeout"


@dataclass
class Scored:
    """A results folder judged against known verdicts."""

    name: str
    folder: Path
    rows: list[dict[str, str]]
    judgements: list[str]
    tallies: dict[str, Tally]


def score_rows(name: str, folder: Path, rows: list[dict[str, str]], truth: dict[tuple[str, str, str], Truth],
               rules: str) -> Scored:
    judgements = [judge_row(row, truth) for row in rows]
    return Scored(name, Path(folder), rows, judgements, tally(rows, judgements, rules))


def score_folder(folder: Path, truth: dict[tuple[str, str, str], Truth], rules: str, name: str = "") -> Scored:
    """Read and judge `folder/results.csv`."""
    path = Path(folder) / RESULTS_CSV
    if not path.is_file():
        raise UserError(str(folder), f"no {RESULTS_CSV} in this folder")
    return score_rows(name or Path(folder).name, folder, read_rows(path), truth, rules)


def _cells(suite: str, group: Tally) -> list[str]:
    median = f"{statistics.median(group.seconds):.2f}" if group.seconds else "-"
    return [suite, str(group.instances), *(str(group.counts[c]) for c in COLUMNS), str(group.points), median]


def summary_markdown(scored: Scored, rules: str) -> str:
    """The summary as a markdown table, one row per suite and the total."""
    lines = [f"## {scored.name} ({rules} rules)", "", "| " + " | ".join(HEADER) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(HEADER))) + "|"]
    for suite, group in scored.tallies.items():
        cells = _cells(suite, group)
        if suite == "total":
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_table(scored: Scored, rules: str) -> Table:
    """The summary for the terminal; wrong answers in red."""
    table = Table(title=f"{scored.name} ({rules} rules)", title_justify="left", box=box.SIMPLE_HEAVY,
                  caption=CAPTION, caption_justify="left")
    for index, name in enumerate(SHORT_HEADER):
        table.add_column(name, justify="left" if index == 0 else "right",
                         style="bold red" if name == "wrong" else None, no_wrap=index == 0)
    for suite, group in scored.tallies.items():
        if suite == "total":
            table.add_section()
        table.add_row(*_cells(suite, group), style="bold" if suite == "total" else None)
    return table


def _expected(known: Truth | None) -> str:
    if known is None:
        return ""
    return known.majority or "" if known.verdict == "disputed" else known.verdict


def alarms(scored: Scored, truth: dict[tuple[str, str, str], Truth]) -> list[tuple[str, str]]:
    """(style, line) for every wrong answer and every finding of a folder."""
    lines = []
    for row, judgement in zip(scored.rows, scored.judgements):
        expected = _expected(truth.get(row_key(row)))
        where = f"{scored.name}: {row['suite']} {row['onnx']} {row['vnnlib']}: answered {row['verdict']}"
        if judgement == "wrong":
            if row["verdict"] == "sat" and row["check"] != "valid":
                where += f", counterexample {row['check'] or 'none'}"
            lines.append(("bold red", f"WRONG {where}" + (f", known {expected}" if expected else "")))
        elif judgement == "finding":
            path = scored.folder / COUNTEREXAMPLES / row["counterexample"]
            lines.append(("bold yellow", f"FINDING {where} with a checked counterexample ({path}), known {expected}"))
    return lines


def show(scored: list[Scored], truth: dict[tuple[str, str, str], Truth], rules: str, console: Console,
         errors: Console) -> int:
    """Print each folder's table, then findings and wrong answers on `errors`; the number of wrong answers."""
    for one in scored:
        console.print(summary_table(one, rules))
    wrong = 0
    for one in scored:
        for style, line in alarms(one, truth):
            errors.print(line, style=style, markup=False, highlight=False, soft_wrap=True)
            wrong += line.startswith("WRONG")
    if wrong:
        errors.print(f"{wrong} WRONG ANSWER{'S' if wrong > 1 else ''}", style="bold white on red")
    return wrong


def plot_runs(scored: list[Scored], path: Path) -> None:
    """One cactus line per folder; folder names that repeat are told apart by their full paths."""
    from verifier.benchmarks.plot import cactus_plot, solved_times  # matplotlib takes a while to import

    names = [one.name for one in scored]
    runs = {(one.name if names.count(one.name) == 1 else str(one.folder)): solved_times(one.rows, one.judgements)
            for one in scored}
    cactus_plot(runs, path)
