"""What a suite run shows while it runs: a live panel on a terminal, plain lines elsewhere (CI, logs).

Both displays read one ProgressState; `render` turns it into the live panel, so a test can draw
the panel on a recording console.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass
class ProgressState:
    """Counts of a run: `done` includes rows recorded by an earlier run that this one resumes."""

    total: int
    done: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    findings: int = 0
    running: dict[int, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished_here: int = 0
    cluster: str = ""  # with --cluster: the nodes and actors alive

    def start(self, slot: int, label: str) -> None:
        self.running[slot] = label

    def recorded(self, verdict: str, judgement: str) -> None:
        """Count an instance whose row is recorded (by this run or the one it resumes)."""
        self.done += 1
        self.counts[verdict] += 1
        self.wrong += judgement == "wrong"
        self.findings += judgement == "finding"

    def finish(self, slot: int, verdict: str, judgement: str) -> None:
        self.running.pop(slot, None)
        self.finished_here += 1
        self.recorded(verdict, judgement)

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started)

    def remaining(self, now: float) -> float | None:
        """Seconds left at this run's pace so far; None before the first instance ends."""
        if not self.finished_here:
            return None
        return self.elapsed(now) / self.finished_here * (self.total - self.done)


def duration(seconds: float | None) -> str:
    """h:mm:ss, or '?' when unknown."""
    if seconds is None:
        return "?"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def counts_text(state: ProgressState) -> str:
    text = "  ".join(f"{verdict} {state.counts[verdict]}" for verdict in VERDICTS)
    return text + (f"  wrong {state.wrong}" if state.wrong else "") + (
        f"  finding {state.findings}" if state.findings else "")


def finished_line(state: ProgressState, row: dict[str, str], judgement: str) -> str:
    """One line for an instance that just ended."""
    line = f"[{state.done}/{state.total}] {row['suite']} {row['onnx']} {row['vnnlib']}: {row['verdict']}"
    line += f" in {float(row['seconds']):.2f} s"
    if row.get("check"):
        line += f" (counterexample {row['check']})"
    if judgement in ("wrong", "finding"):
        line += f" -- {judgement.upper()}"
    if row.get("note"):
        line += f" [{row['note']}]"
    return line


def render(state: ProgressState, now: float) -> RenderableType:
    """The live panel: progress, counts per verdict, elapsed and estimated time, running instances."""
    head = Table.grid(padding=(0, 2))
    for _ in range(4):
        head.add_column(no_wrap=True)
    head.add_row(ProgressBar(total=max(state.total, 1), completed=state.done, width=30),
                 f"{state.done}/{state.total} done", f"elapsed {duration(state.elapsed(now))}",
                 f"left ~{duration(state.remaining(now))}")
    if state.cluster:
        head.add_row("", f"cluster: {state.cluster}", "", "")
    counts = Text(counts_text(state), style="bold red" if state.wrong else "")
    running = Table.grid()
    running.add_column(no_wrap=True, overflow="ellipsis")
    for slot in sorted(state.running):
        running.add_row(f"running: {state.running[slot]}")
    return Group(head, counts, running)


class Display(Protocol):
    def __enter__(self) -> Display: ...

    def __exit__(self, *exc: object) -> None: ...

    def finished(self, row: dict[str, str], judgement: str) -> None: ...


class PlainDisplay:
    """One line per finished instance, with the counts and times: for logs and CI."""

    def __init__(self, state: ProgressState, stream: IO[str]) -> None:
        self.state = state
        self.stream = stream
        self._lock = threading.Lock()

    def __enter__(self) -> PlainDisplay:
        self._print(f"{self.state.total} instances, {self.state.done} recorded already")
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def finished(self, row: dict[str, str], judgement: str) -> None:
        now = time.time()
        cluster = f" | {self.state.cluster}" if self.state.cluster else ""
        self._print(f"{finished_line(self.state, row, judgement)} | {counts_text(self.state)} | "
                    f"elapsed {duration(self.state.elapsed(now))} left ~{duration(self.state.remaining(now))}"
                    f"{cluster}")


class LiveDisplay:
    """The live panel at the bottom of a terminal, finished instances printed above it."""

    def __init__(self, state: ProgressState, console: Console) -> None:
        self.state = state
        self.console = console
        self.live = Live(console=console, refresh_per_second=4, get_renderable=lambda: render(state, time.time()))

    def __enter__(self) -> LiveDisplay:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def finished(self, row: dict[str, str], judgement: str) -> None:
        style = "bold red" if judgement == "wrong" else "bold yellow" if judgement == "finding" else "dim"
        self.console.print(Text(finished_line(self.state, row, judgement), style=style))


def make_display(state: ProgressState, console: Console) -> Display:
    """The live panel when the console is a terminal, plain lines otherwise."""
    if console.is_terminal:
        return LiveDisplay(state, console)
    return PlainDisplay(state, console.file)
