"""What a person sees while `pruneflow sweep` (or `compress`) runs: one live row per combination (model, method,
stage, blocks done, elapsed, ETA), rendered with rich, at most `SHOWN_ROWS` of them at a time (a grid of thousands
shows the rows around the running ones and one row counting the rest); everything else (Prefect, MLflow, lm-eval,
transformers, warnings, C-level prints) goes to a log file under the run folder, and the warnings in it are summarised
at the end.

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
from typing import IO, TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from flows.params import SweepParams
    from flows.sweep import SweepResult
    from pruning.record import PruneRecord

WARNING_LINE = re.compile(r"\bwarn(ing)?\b", re.IGNORECASE)
# A larger grid shows a window of rows: rendering every row of a 10,000-combination grid took rich 12 s at each stop
SHOWN_ROWS = 24
SHOWN_DONE = 4  # finished rows kept above the first unfinished one
QUALITY_METRICS = ("ppl", "top-1")  # the report's quality columns, each "<metric> <protocol>"


def _progress(console: Console, transient: bool = False) -> Progress:
    return Progress(TextColumn("{task.fields[model]}", style="cyan"), TextColumn("{task.description}", style="bold"),
                    TextColumn("{task.fields[stage]}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, refresh_per_second=2, redirect_stdout=False, redirect_stderr=False,
                    transient=transient)


@dataclass
class CombinationRow:
    """One combination's live row: its stage, its blocks, and its result when done (a `pruning.job.JobProgress`)."""

    progress: Progress
    task: TaskID
    label: str
    view: SweepView | None = None  # told when the row starts or ends, to move its window

    def stage(self, name: str) -> None:
        if not self.progress.tasks[self.task].started:
            self.progress.start_task(self.task)
            self._moved()
        self.progress.update(self.task, stage=name)

    def _moved(self) -> None:
        if self.view is not None:
            self.view.show_window()

    def blocks(self, total: int) -> None:
        self.stage("prune")
        self.progress.update(self.task, total=total, completed=0)

    def block_done(self, index: int) -> None:
        self.progress.update(self.task, completed=index + 1)

    def model_measured(self, done: int, total: int) -> None:
        """The speed stage: `done` of `total` models timed."""
        if not self.progress.tasks[self.task].started:
            self.progress.start_task(self.task)
            self._moved()
        self.progress.update(self.task, stage="speed", unit="models", total=total, completed=done)

    def done(self, result: str) -> None:
        task = self.progress.tasks[self.task]
        self.progress.update(self.task, stage=f"done  {result}", completed=task.total or 1, total=task.total or 1)
        self.progress.stop_task(self.task)
        self._moved()
        if not self.progress.console.is_terminal:  # a log or a pipe: one line per finished combination
            self.progress.console.print(f"{task.fields['model']}  {self.label}  done  {result}  "
                                        f"{task.elapsed or 0:.0f} s")


class SweepView:
    """The live rows of one sweep, on the terminal's stderr."""

    active: SweepView | None = None

    def __init__(self, console: Console, transient: bool = False) -> None:
        self.progress = _progress(console, transient)
        self.rows: dict[str, CombinationRow] = {}
        self.hidden_summary: TaskID | None = None  # the row that counts the rows outside the window

    def add(self, key: str, model: str, label: str) -> None:
        task = self.progress.add_task(label, total=None, start=False, model=model, stage="waiting", unit="blocks",
                                      visible=len(self.rows) < SHOWN_ROWS)
        self.rows[key] = CombinationRow(self.progress, task, label, self)

    def show_window(self) -> None:
        """Show `SHOWN_ROWS` rows in the order they run, from `SHOWN_DONE` finished ones above the first unfinished
        row on; a last row counts the finished and waiting rows above and below the window."""
        if len(self.rows) <= SHOWN_ROWS:
            return
        by_id = {task.id: task for task in self.progress.tasks}  # (rich copies its task list at every access)
        tasks = [by_id[row.task] for row in self.rows.values()]
        unfinished = next((index for index, task in enumerate(tasks) if not task.finished), len(tasks))
        start = max(0, min(unfinished - SHOWN_DONE, len(tasks) - SHOWN_ROWS))
        for index, task in enumerate(tasks):
            visible = start <= index < start + SHOWN_ROWS
            if task.visible != visible:
                self.progress.update(task.id, visible=visible)
        outside = tasks[:start] + tasks[start + SHOWN_ROWS:]
        finished = sum(task.finished for task in outside)
        summary = f"{len(outside):,} more: {finished:,} done, {len(outside) - finished:,} waiting"
        if self.hidden_summary is None:
            self.hidden_summary = self.progress.add_task("...", total=None, start=False, model="", stage=summary,
                                                         unit="")
        else:
            self.progress.update(self.hidden_summary, stage=summary)

    @contextlib.contextmanager
    def live(self) -> Iterator[SweepView]:
        SweepView.active = self
        self.show_window()
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
    own = SweepView(Console(stderr=True), transient=True)  # the command prints its result (or error) after it
    own.add(key, model, label)
    with own.live():
        yield own.rows[key]


@dataclass
class Terminal:
    """Consoles on the real stdout / stderr while fd 1 and 2 point at the log."""

    out: Console
    err: Console
    log_path: Path | None


PIPE_WIDTH = 160  # columns for a console that is not a terminal (rich's 80 wraps the results table)


def _console(stream: IO[Any]) -> Console:
    """A console on `stream`: a terminal's own width, else $COLUMNS or PIPE_WIDTH (`make run | tee run.log`)."""
    width = None if stream.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH
    return Console(file=stream, width=width)


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
        terminal = Terminal(_console(streams[0]), _console(streams[1]), log_path)
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
    there is one model: it goes to the title), perplexity columns named ppl, ppl 2, ... (top-1 accuracy columns
    top-1, top-1 2, ...) with their protocols returned as footnotes."""
    models = {row[0] for row in rows}
    kept = [index for index in range(len(header))
            if (len(models) > 1 if index == 0 else index < 3 or any(row[index] != "-" for row in rows))]
    if len(models) == 1:
        title = f"{next(iter(models))}: {title}"
    # Quality columns ("ppl <protocol>", a vision model's "top-1 <protocol>") are named by metric and number; their
    # protocols become footnotes.
    protocols = {metric: [name.removeprefix(f"{metric} ") for name in header if name.startswith(f"{metric} ")]
                 for metric in QUALITY_METRICS}
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for index in kept:
        name = header[index]
        metric = next((metric for metric in QUALITY_METRICS if name.startswith(f"{metric} ")), None)
        if metric is not None:
            found = protocols[metric]
            number = found.index(name.removeprefix(f"{metric} ")) + 1
            name = metric if len(found) == 1 else f"{metric} {number}"
        table.add_column(name, justify="left" if index < 3 else "right", no_wrap=index < 3, overflow="fold")
    # A method with engine additions ("admm + dense targets + ...") is marked (admm *1) and spelled out below.
    combined = list(dict.fromkeys(row[1] for row in rows if " + " in row[1]))
    for row in rows:
        method = row[1]
        if method in combined:
            method = f"{method.split(' + ')[0]} *{combined.index(method) + 1}"
        table.add_row(*(method if index == 1 else row[index] for index in kept),
                      style="bold" if row[1] == "dense" else None)
    notes = [f"{metric}{'' if len(found) == 1 else f' {number}'}: {protocol}"
             for metric, found in protocols.items() for number, protocol in enumerate(found, 1)]
    notes += [f"*{number}: {method}" for number, method in enumerate(combined, 1)]
    return table, notes


def print_job_result(record: PruneRecord) -> None:
    """What `prune` and `compress` print once the job is done: perplexities with their protocols, the sparsity, the
    prune step's wall time and the engine's own time, and where the model is."""
    from pruning.models.factored import FACTORED_DIRECTORY

    console = Console()
    for label, results in (("dense", record.dense_perplexity), ("pruned", record.perplexity)):
        for result in results:
            console.print(f"{label:>8}  ppl {result.perplexity:10.3f}  {result.protocol}", markup=False,
                          highlight=False, soft_wrap=True)
    output = record.config.output_dir
    engine = record.engine
    console.print(f"sparsity {record.decoder_linear_sparsity:.4f} over the blocks' linears; prune step "
                  f"{record.run.step_seconds.get('prune', 0.0):.1f} s (engine forward + solve "
                  f"{engine.engine_seconds:.1f} s; {engine.blocks_reused} of "
                  f"{engine.blocks_reused + engine.blocks_computed} blocks reused); {record.machine.summary()}; "
                  f"saved to {output}", markup=False, highlight=False, soft_wrap=True)
    if (output / FACTORED_DIRECTORY).is_dir():
        console.print(f"sparse + low-rank checkpoint in {output / FACTORED_DIRECTORY} "
                      f"(load with pruning.load_compressed('{output}'))", markup=False, highlight=False, soft_wrap=True)


def print_sweep_summary(terminal: Terminal, params: SweepParams, result: SweepResult, seconds: float) -> None:
    """The results table below the live rows, its footnotes, and where the report, models, runs and log are."""
    from flows.report import ReportRow, load_speed, table_cells
    from flows.report_page import PAGE_FILE
    from flows.tracking import redacted, tracking_uri

    rows = [ReportRow.dense(item.directory, params.model_name(item.model), item.perplexity, item.zero_shot)
            for item in result.baselines]
    rows += [ReportRow.of_record(item.record(), params.model_name(item.model)) for item in result.combinations]
    header, cells, notes = table_cells(rows, load_speed(params.paths.runs / "speed"), compact=True)
    table, protocols = console_results_table(header, cells, f"{len(result.combinations)} combinations in "
                                                            f"{seconds:.0f} s")
    out = terminal.out
    out.print(table)
    for note in [*protocols, *notes]:
        out.print(note, style="dim", markup=False, highlight=False)
    out.print(f"\nReport: {params.paths.runs / 'report' / PAGE_FILE} (and results.md, CSVs, plots)", soft_wrap=True)
    out.print(f"Pruned models: {params.paths.runs}/<model>/<combination>/ (each with a model card)", soft_wrap=True)
    out.print(f"MLflow: {redacted(tracking_uri(Path.cwd()))}, experiment '{params.tracking.experiment}'; "
              "open it with `pruneflow ui` (http://127.0.0.1:5000)", soft_wrap=True)
    if terminal.log_path is not None:
        warnings = warning_summary(terminal.log_path, 0)
        out.print(f"Log: {terminal.log_path}" + (f" ({len(warnings)} distinct warning lines:)" if warnings
                                                 else " (no warnings)"), soft_wrap=True)
        for line in warnings:
            out.print(f"  {line}", style="yellow", markup=False, highlight=False)


def methods_table(width: int | None) -> None:
    """Every registered method, its kind, what it is, and its options with their defaults (from its config)."""
    from rich.text import Text

    from pruning.methods.registry import METHOD_MODULES, is_structured, method_summaries

    table = Table(title="pruneflow methods (--method NAME, --option KEY=VALUE)", show_lines=True)
    for column in ("method", "kind", "what it is", "options (default)"):
        table.add_column(column)
    shared = {"method", "sparsity", "pattern"}
    for name, summary in method_summaries().items():
        fields = METHOD_MODULES[name].CONFIG.model_fields
        options = "\n".join(f"{key} ({field.default!r}): {field.description or ''}".rstrip(": ")
                            for key, field in fields.items() if key not in shared)
        kind = "structured" if is_structured(name) else "unstructured, N:M"
        table.add_row(name, kind, Text(summary), Text(options))  # Text: no markup or emoji codes in the docs
    Console(width=width).print(table)
