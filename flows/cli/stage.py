"""`pruneflow stage <name>`: one stage of the DVC pipeline (dvc.yaml calls these; see flows/stages.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.cli.common import Commands

# One runner per DVC stage: (the stages module, params, arguments) -> None.
_STAGES: dict[str, Callable[[Any, Any, argparse.Namespace], None]] = {
    "fetch": lambda stages, params, given: stages.fetch(params, given.model, given.output),
    "calibrate": lambda stages, params, given: stages.calibrate(params, given.model_dir, given.output),
    "prune": lambda stages, params, given: stages.prune(params, given.model, given.method, given.model_dir,
                                                        given.calibration_dir, given.output),
    "evaluate": lambda stages, params, given: stages.evaluate(params, given.model, given.model_dir, given.rows,
                                                              given.metrics),
    "bench": lambda stages, params, given: stages.bench(params, given.model_dir, given.dense_dir, given.output),
    "report": lambda stages, params, given: stages.report(given.rows, given.speed, given.output,
                                                          params.tracking.experiment),
}
# The options each stage needs: a missing one is a one-line error, not a traceback deep in the stage.
_REQUIRED = {"fetch": ("model", "output"), "calibrate": ("model_dir", "output"),
             "prune": ("model", "method", "model_dir", "calibration_dir", "output"),
             "evaluate": ("model", "model_dir", "rows", "metrics"), "bench": ("model_dir", "dense_dir", "output"),
             "report": ("rows", "output")}


def add_commands(commands: Commands) -> None:
    stage = commands.add_parser("stage", help="one stage of the DVC pipeline (see dvc.yaml)")
    stage.add_argument("name", choices=list(_STAGES))
    stage.add_argument("--params", type=Path, default=Path("params.yaml"))
    stage.add_argument("--model", help="the model's name in params.yaml")
    stage.add_argument("--method")
    stage.add_argument("--model-dir", type=Path)
    stage.add_argument("--calibration-dir", type=Path)
    stage.add_argument("--dense-dir", type=Path, help="the dense model each bench case is paired with (bench)")
    stage.add_argument("--rows", type=Path, help="report rows: the folder evaluate writes and report reads")
    stage.add_argument("--metrics", type=Path, help="flat DVC metrics folder (evaluate)")
    stage.add_argument("--speed", type=Path, help="folder of speed files (report)")
    stage.add_argument("--output", type=Path)
    stage.set_defaults(handler=_stage)


def _stage(arguments: argparse.Namespace) -> int:
    from flows import stages
    from flows.params import load_params
    from pruning.errors import ConfigError

    missing = [name for name in _REQUIRED[arguments.name] if getattr(arguments, name) is None]
    if missing:
        raise ConfigError(f"--{missing[0].replace('_', '-')}: stage {arguments.name} needs it (see dvc.yaml)")
    _STAGES[arguments.name](stages, load_params(arguments.params), arguments)
    return 0
