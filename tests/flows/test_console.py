"""The consoles the sweep prints on: a pipe or a file gets a table-wide width, a terminal keeps its own; a large
grid's live view shows a window of rows."""

import io

from rich.console import Console
from rich.table import Table

from flows.console import PIPE_WIDTH, SHOWN_DONE, SHOWN_ROWS, SweepView, output_to_log


def test_a_piped_results_table_is_not_wrapped_at_80_columns(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("COLUMNS", raising=False)
    table = Table(*[f"column {index} with a long heading" for index in range(4)])
    table.add_row(*["a value"] * 4)
    with output_to_log(tmp_path / "log.txt", verbose=False) as terminal:
        assert terminal.out.width == PIPE_WIDTH
        terminal.out.print(table)
    printed = capfd.readouterr().out
    assert "column 3 with a long heading" in printed  # one line per row: nothing wrapped
    assert max(len(line) for line in printed.splitlines()) > 80


def test_columns_from_the_environment_win(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with output_to_log(tmp_path / "log.txt", verbose=False) as terminal:
        assert terminal.out.width == 100


def test_a_large_grid_shows_a_window_of_rows_that_follows_the_running_one():
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    view = SweepView(console)
    for index in range(10_000):
        view.add(f"combination-{index}", "tiny", f"wanda {index}")
    with view.live():
        for index in range(30):
            row = view.rows[f"combination-{index}"]
            row.blocks(2)
            row.done("ppl 1.0")
        view.rows["combination-30"].stage("calibrate")
        shown = [task for task in view.progress.tasks if task.visible]
    labels = [task.description for task in shown[:-1]]
    assert len(labels) == SHOWN_ROWS
    assert labels[0] == f"wanda {30 - SHOWN_DONE}" and "wanda 30" in labels  # the running row and a few done above
    assert shown[-1].fields["stage"] == f"{10_000 - SHOWN_ROWS:,} more: {30 - SHOWN_DONE:,} done, " \
        f"{10_000 - SHOWN_ROWS - 30 + SHOWN_DONE:,} waiting"


def test_a_small_grid_shows_every_row_and_no_summary():
    view = SweepView(Console(file=io.StringIO(), force_terminal=True))
    for index in range(SHOWN_ROWS):
        view.add(f"combination-{index}", "tiny", f"wanda {index}")
    with view.live():
        pass
    assert [task.visible for task in view.progress.tasks] == [True] * SHOWN_ROWS
