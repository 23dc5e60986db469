"""The consoles the sweep prints on: a pipe or a file gets a table-wide width, a terminal keeps its own."""

from rich.table import Table

from flows.console import PIPE_WIDTH, output_to_log


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
