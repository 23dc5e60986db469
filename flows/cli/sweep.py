"""`pruneflow sweep` (models x methods x sparsities from a params file, tracked in MLflow, behind a live view) and
`pruneflow serve` (the sweep as a scheduled Prefect deployment)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from flows.cli.common import Commands


def add_commands(commands: Commands) -> None:
    sweep = commands.add_parser("sweep", help="models x methods x sparsities from a params file, tracked in MLflow")
    sweep.add_argument("--params", type=Path, default=Path("params.yaml"))
    sweep.add_argument("--verbose", action="store_true",
                       help="show every library's output on the terminal (default: <paths.runs>/logs/sweep-*.log)")
    sweep.add_argument("--allow-long", action="store_true",
                       help="start a grid estimated at more than a day (refused without it)")
    sweep.set_defaults(handler=_sweep)

    serve = commands.add_parser("serve", help="register the sweep as a scheduled Prefect deployment and serve it")
    serve.add_argument("--params", type=Path, default=Path("params.yaml"))
    serve.add_argument("--cron", default="0 3 * * *", help="cron schedule (default: 03:00 daily)")
    serve.add_argument("--name", default="scheduled-sweep")
    serve.set_defaults(handler=_serve)


def _sweep(arguments: argparse.Namespace) -> int:
    """The sweep behind a live view: a row per combination on the terminal, the rest in <runs>/logs/."""
    from flows.compress import combination_label
    from flows.console import SweepView, output_to_log, print_sweep_summary
    from flows.params import check_sweep, check_sweep_length, load_params
    from flows.sweep import dense_key, speed_key, sweep_with_task_runner
    from pruning.job import prepare_inputs

    params = load_params(arguments.params)
    check_sweep_length(params, arguments.allow_long)
    check_sweep(params)
    for job in params.jobs:  # every problem is reported before Prefect or MLflow start (the store keeps the rest)
        prepare_inputs(job)
    log_path = params.paths.runs / "logs" / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}.log"
    started = time.perf_counter()
    with output_to_log(log_path, arguments.verbose) as terminal:
        view = SweepView(terminal.err)
        if params.dense_baseline:
            for model in params.models:
                view.add(dense_key(model.source), model.name, "dense")
        for job in params.jobs:
            view.add(str(job.output_dir), params.model_name(job.model), combination_label(job))
        if params.bench.in_sweep:
            for model in params.models:
                view.add(speed_key(model.source), model.name, "speed")
        with view.live():
            result = sweep_with_task_runner(params, arguments.params.name)
    print_sweep_summary(terminal, params, result, time.perf_counter() - started)
    return 0


def _serve(arguments: argparse.Namespace) -> int:
    from flows.params import load_params
    from flows.sweep import scheduled_sweep

    load_params(arguments.params)
    scheduled_sweep.serve(name=arguments.name, cron=arguments.cron, parameters={"params_path": str(arguments.params)})
    return 0
