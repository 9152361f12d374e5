"""The cactus plot: instances solved against time, one line per results folder.

Solved means `sat` or `unsat` that is not judged wrong. Each line is a run's solving times sorted
ascending: the k-th point says how long the k-th fastest solved instance took, so a line further
right solved more and a lower line solved faster.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

SOLVED = ("correct", "unjudged", "finding")
MIN_SECONDS = 0.01  # the time axis is logarithmic


def solved_times(rows: list[dict[str, str]], judgements: list[str]) -> list[float]:
    """Sorted wall times of the instances a run solved."""
    return sorted(max(float(row["seconds"] or 0), MIN_SECONDS) for row, judgement in zip(rows, judgements)
                  if row["verdict"] in ("sat", "unsat") and judgement in SOLVED)


def cactus_plot(runs: dict[str, list[float]], path: Path) -> Figure:
    """Draw one line per run (name -> solved times) and save the PNG to `path`."""
    # A bare Figure (not pyplot) keeps no global state and renders with Agg.
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for name, times in runs.items():
        axes.plot(range(1, len(times) + 1), sorted(times), marker="o", markersize=3, linewidth=1.5,
                  label=f"{name} ({len(times)} solved)")
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("instances solved", fontsize=12)
    axes.set_ylabel("wall time per instance (s)", fontsize=12)
    axes.set_title("Cactus plot: instances solved within a time", fontsize=13)
    axes.tick_params(labelsize=10)
    axes.grid(True, which="both", alpha=0.3)
    if not any(runs.values()):
        axes.set_ylim(MIN_SECONDS, 10)
    axes.legend(fontsize=10, loc="upper left")
    figure.savefig(path, dpi=120)
    return figure
