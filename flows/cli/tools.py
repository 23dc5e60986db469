"""The small commands: `fetch` (a model's local folder), `methods` (what each method is), `ui` (MLflow and Prefect
on 127.0.0.1) and `report` (the comparison report from report rows and speed files)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from flows.cli.common import Commands, add_model_option, port
from pruning.config import DEFAULT_CACHE_DIR


def add_commands(commands: Commands) -> None:
    report = commands.add_parser("report", help="Markdown table and PNG plots from report rows (and speed files)")
    report.add_argument("--rows", type=Path, default=Path("evaluations"), help="the evaluate stage's folder")
    report.add_argument("--speed", type=Path, default=Path("speed"), help="the bench stage's folder")
    report.add_argument("--output", type=Path, default=Path("reports"))
    report.add_argument("--mlflow-experiment", help="also log the report to this MLflow experiment")
    report.set_defaults(handler=_report)

    interface = commands.add_parser("ui", help="start the MLflow UI (and, with --prefect, the Prefect server)")
    interface.add_argument("--port", type=port, default=5000)
    interface.add_argument("--prefect", action="store_true", help="also start `prefect server` on 127.0.0.1:4200")
    interface.set_defaults(handler=_user_interfaces)

    fetch = commands.add_parser("fetch", help="fetch (and convert) a model; print its local directory")
    add_model_option(fetch)
    fetch.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    fetch.set_defaults(handler=_fetch)

    methods = commands.add_parser("methods", help="list the pruning methods and their options")
    methods.add_argument("--width", type=int, default=None, help="table width (default: the terminal's)")
    methods.set_defaults(handler=_methods)


def _report(arguments: argparse.Namespace) -> int:
    from flows.stages import report
    from pruning.io import check_output_path

    # a previous report (results.md) is replaced; a folder of anything else is refused
    check_output_path(arguments.output, "--output", directory=True,
                      overwrite=(arguments.output / "results.md").is_file())
    report(arguments.rows, arguments.speed, arguments.output, arguments.mlflow_experiment)
    print(f"report in {arguments.output}")
    return 0


def _user_interfaces(arguments: argparse.Namespace) -> int:
    """MLflow's UI on 127.0.0.1 over the project's tracking store; Prefect's server too when asked."""
    from flows.tracking import tracking_uri

    # The store's URI (it may hold a password) goes to the child by environment, not on its command line.
    environment = {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri(Path.cwd())}
    processes = [subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port",
                                   str(arguments.port), "--workers", "1"], env=environment)]
    print(f"MLflow UI: http://127.0.0.1:{arguments.port}")
    if arguments.prefect:
        processes.append(subprocess.Popen([sys.executable, "-m", "prefect", "server", "start",
                                           "--host", "127.0.0.1", "--port", "4200"]))
        print("Prefect UI: http://127.0.0.1:4200 (set PREFECT_API_URL=http://127.0.0.1:4200/api to use it)")
    try:
        for process in processes:
            process.wait()
    finally:
        for process in processes:
            process.terminate()
    return 0


def _fetch(arguments: argparse.Namespace) -> int:
    from pruning.models.sources import check_model_source
    from pruning.steps import fetch

    check_model_source(arguments.model, "model", arguments.allow_unpinned)
    print(fetch(arguments.model, arguments.cache_dir).path)
    return 0


def _methods(arguments: argparse.Namespace) -> int:
    from flows.console import methods_table

    methods_table(arguments.width)
    return 0
