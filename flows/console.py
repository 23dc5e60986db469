"""What a person sees while `pruneflow sweep` (or `compress`) runs: one live row per combination (model, method,
stage, blocks done, elapsed, ETA), rendered with rich; everything else (Prefect, MLflow, lm-eval, transformers,
warnings, C-level prints) goes to a log file under the run folder, and the warnings in it are summarised at the end.

Rows are keyed by the combination's output folder, so that the `compress` flow finds the row the sweep made for it;
run on its own (or in a Dask worker, where no sweep view exists) it shows a row of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

WARNING_LINE = re.compile(r"\bwarn(ing)?\b", re.IGNORECASE)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.fields[model]}", style="cyan"), TextColumn("{task.description}", style="bold"),
                    TextColumn("{task.fields[stage]}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                    TextColumn("blocks"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, refresh_per_second=2, redirect_stdout=False, redirect_stderr=False)


@dataclass
class CombinationRow:
    """One combination's live row: its stage, its blocks, and its result when done."""

    progress: Progress
    task: TaskID
    label: str

    def stage(self, name: str) -> None:
        if not self.progress.tasks[self.task].started:
            self.progress.start_task(self.task)
        self.progress.update(self.task, stage=name)

    def blocks(self, total: int) -> None:
        self.stage("prune")
        self.progress.update(self.task, total=total, completed=0)

    def advance(self) -> None:
        self.progress.advance(self.task)

    def done(self, result: str) -> None:
        task = self.progress.tasks[self.task]
        self.progress.update(self.task, stage=f"done  {result}", completed=task.total or 1, total=task.total or 1)
        self.progress.stop_task(self.task)
        if not self.progress.console.is_terminal:  # a log or a pipe: one line per finished combination
            self.progress.console.print(f"{task.fields['model']}  {self.label}  done  {result}  "
                                        f"{task.elapsed or 0:.0f} s")


class SweepView:
    """The live rows of one sweep, on the terminal's stderr."""

    active: SweepView | None = None

    def __init__(self, console: Console) -> None:
        self.progress = _progress(console)
        self.rows: dict[str, CombinationRow] = {}

    def add(self, key: str, model: str, label: str) -> None:
        task = self.progress.add_task(label, total=None, start=False, model=model, stage="waiting")
        self.rows[key] = CombinationRow(self.progress, task, label)

    @contextlib.contextmanager
    def live(self) -> Iterator[SweepView]:
        SweepView.active = self
        try:
            with self.progress:
                yield self
        finally:
            SweepView.active = None


@contextlib.contextmanager
def combination_row(key: str, model: str, label: str) -> Iterator[CombinationRow]:
    """The sweep's row for `key`, or (no sweep view in this process) a one-row view of its own on stderr."""
    view = SweepView.active
    if view is not None and key in view.rows:
        yield view.rows[key]
        return
    own = SweepView(Console(stderr=True))
    own.add(key, model, label)
    with own.live():
        yield own.rows[key]


@dataclass
class Terminal:
    """Consoles on the real stdout / stderr while fd 1 and 2 point at the log."""

    out: Console
    err: Console
    log_path: Path | None


@contextlib.contextmanager
def output_to_log(log_path: Path, verbose: bool) -> Iterator[Terminal]:
    """Point file descriptors 1 and 2 at `log_path` (appending) and yield rich consoles on the original ones; with
    `verbose`, change nothing. The descriptors are restored on the way out, before any error is printed, and the
    consoles then write to them."""
    if verbose:
        yield Terminal(Console(), Console(stderr=True), None)
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    streams: list[IO[Any]] = [os.fdopen(os.dup(descriptor), "w", buffering=1) for descriptor in saved]
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        terminal = Terminal(Console(file=streams[0]), Console(file=streams[1]), log_path)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for descriptor, original in zip((1, 2), saved, strict=True):
                os.dup2(original, descriptor)
                os.close(original)
            terminal.out.file, terminal.err.file = sys.stdout, sys.stderr  # the terminal again, for what follows
            for stream in streams:
                stream.close()


def warning_summary(log_path: Path, start: int, shown: int = 5) -> list[str]:
    """The distinct warning lines written to the log after byte `start` (the first `shown` of them, then a count)."""
    with open(log_path, errors="replace") as log:
        log.seek(start)
        lines = [" ".join(line.split()) for line in log if WARNING_LINE.search(line)]
    distinct = list(dict.fromkeys(line[:200] for line in lines))
    return distinct[:shown] + ([f"... and {len(distinct) - shown} more"] if len(distinct) > shown else [])


def console_results_table(header: list[str], rows: list[list[str]], title: str) -> tuple[Table, list[str]]:
    """The report's table for an 80-column terminal: columns with no value left out (the model column too when
    there is one model: it goes to the title), perplexity columns named ppl, ppl 2, ... with their protocols
    returned as footnotes."""
    models = {row[0] for row in rows}
    kept = [index for index in range(len(header))
            if (len(models) > 1 if index == 0 else index < 3 or any(row[index] != "-" for row in rows))]
    if len(models) == 1:
        title = f"{next(iter(models))}: {title}"
    protocols = [name.removeprefix("ppl ") for name in header if name.startswith("ppl ")]
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for index in kept:
        name = header[index]
        if name.startswith("ppl "):
            number = protocols.index(name.removeprefix("ppl ")) + 1
            name = "ppl" if len(protocols) == 1 else f"ppl {number}"
        table.add_column(name, justify="left" if index < 3 else "right", no_wrap=index < 3, overflow="fold")
    # A method with engine additions ("admm + dense targets + ...") is marked (admm *1) and spelled out below.
    combined = list(dict.fromkeys(row[1] for row in rows if " + " in row[1]))
    for row in rows:
        method = row[1]
        if method in combined:
            method = f"{method.split(' + ')[0]} *{combined.index(method) + 1}"
        table.add_row(*(method if index == 1 else row[index] for index in kept),
                      style="bold" if row[1] == "dense" else None)
    notes = [f"ppl{'' if len(protocols) == 1 else f' {number}'}: {protocol}"
             for number, protocol in enumerate(protocols, 1)]
    notes += [f"*{number}: {method}" for number, method in enumerate(combined, 1)]
    return table, notes
