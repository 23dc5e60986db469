"""`pruneflow prune` and `pruneflow compress`: one job, from a YAML job file and options, run by `pruning.job.run_job`
in this process (`prune`) or as the Prefect flow `compress` (each step a task); both share the artifact store."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flows.cli.common import Commands, add_store_options, choices
from pruning.blocks.budgets import LayerBudget
from pruning.config import DEFAULT_MODEL, EngineConfig, PruneJob, describe_validation_error
from pruning.errors import ConfigError
from pruning.methods.registry import METHOD_MODULES
from pruning.preflight import field_problems


def _parse_option(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"--option '{text}' must be key=value, e.g. blocksize=128")
    return key, yaml.safe_load(value)


def job_options() -> argparse.ArgumentParser:
    """The options of a job, shared by `prune` and `compress` (every default comes from `PruneJob`)."""
    options = argparse.ArgumentParser(add_help=False)
    add = options.add_argument
    add("-h", "--help", action="help", help="show this help message and exit")
    add("--config", type=Path, help="YAML job file; command-line options override it")
    add("--model", help=f"model source (default {DEFAULT_MODEL})")
    add("--base-model", metavar="ORG/NAME", help="hub id the model was made from (a GGUF's original), for the card")
    add("--method", choices=list(METHOD_MODULES), metavar="METHOD",
        help=f"one of {', '.join(METHOD_MODULES)}; `pruneflow methods` describes each and its options")
    add("--sparsity", type=float, help="fraction of weights removed, in [0, 1)")
    add("--pattern", help="unstructured (default) or N:M such as 2:4")
    add("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
        help="method-specific setting, e.g. blocksize=128 or damping=0.01")
    add("--calibration", help="calibration source (default wiki-summaries)")
    add("--num-samples", type=int, help="calibration windows (default 64)")
    add("--seqlen", type=int, help="tokens per calibration window (default 512)")
    add("--seed", type=int)
    add("--eval", action="append", metavar="DATASET", help="evaluation dataset (repeatable)")
    add("--eval-seqlen", type=int)
    add("--eval-windows", type=int, help="evaluate on the first N windows")
    add("--eval-dense", action="store_true", help="also evaluate the model before pruning")
    add("--zero-shot", action="append", metavar="TASK",
        help="lm-eval zero-shot task after pruning (repeatable), e.g. piqa, arc_easy")
    add("--zero-shot-data", type=Path, metavar="DIR", help="local copy of the task datasets (e.g. ../shared/data)")
    add("--zero-shot-limit", type=int, metavar="N", help="first N documents of each task")
    add("--device", choices=choices(EngineConfig, "device"))
    add("--forward-dtype", choices=choices(EngineConfig, "forward_dtype"),
        help="calibration forwards: float32 (default; the same numbers on every machine), bfloat16, or auto (bf16 "
             "where the hardware has it)")
    add("--batch-size", type=int)
    add("--skip-layer", action="append", metavar="PATTERN", help="fnmatch pattern of linears to keep dense")
    add("--targets", choices=choices(EngineConfig, "targets"),
        help="fit each linear to its output on the pruned model's inputs (default) or to the dense model's output")
    add("--reconstruct", action="store_true",
        help="after each block, optimise its kept weights toward the dense block's outputs (engine.reconstruction "
             "in a job file sets its epochs, learning rate, ...)")
    add("--budget", choices=choices(LayerBudget, "kind"),
        help="spread unstructured sparsity over the blocks by OWL's outlier ratios or a depth ramp (engine.budget "
             "in a job file sets λ, M, δ)")
    add("--output", help="output directory for the pruned model (a new or empty folder)")
    add("--allow-unpinned", action="store_true", help="accept hf://<org>/<name> without @<revision>")
    add("--trust-remote-code", action="store_true",
        help="run the model repository's own Python code (needed by a few custom models)")
    add("--overwrite", action="store_true",
        help="replace a non-empty --output; the old copy stays until the new one is complete")
    add_store_options(options, defaults=False)
    return options


def add_commands(commands: Commands) -> None:
    shared = job_options()
    prune = commands.add_parser("prune", parents=[shared], add_help=False,
                                help="prune a model layer by layer in this process and evaluate it")
    prune.set_defaults(handler=_prune)
    compress = commands.add_parser("compress", parents=[shared], add_help=False,
                                   help="the same job as a Prefect flow: each step a task, cached and resumable")
    compress.add_argument("--verbose", action="store_true",
                          help="show Prefect's and every library's output on the terminal (default: "
                               "<artifacts>/logs/compress-*.log)")
    compress.set_defaults(handler=_compress)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    if value is None:
        return
    *parents, leaf = dotted.split(".")
    for parent in parents:
        tree = tree.setdefault(parent, {})
    tree[leaf] = value


def job_from_arguments(arguments: argparse.Namespace) -> PruneJob:
    """Merge the YAML job file (if any) with the command-line options, then validate."""
    from flows.params import read_yaml_mapping

    fields = read_yaml_mapping(arguments.config, "--config") if arguments.config else {}
    for dotted, value in [("model", arguments.model), ("base_model", arguments.base_model),
                          ("method.method", arguments.method),
                          ("method.sparsity", arguments.sparsity), ("method.pattern", arguments.pattern),
                          ("calibration.source", arguments.calibration),
                          ("calibration.num_samples", arguments.num_samples),
                          ("calibration.seqlen", arguments.seqlen), ("calibration.seed", arguments.seed),
                          ("engine.device", arguments.device), ("engine.forward_dtype", arguments.forward_dtype),
                          ("engine.batch_size", arguments.batch_size), ("engine.skip_layers", arguments.skip_layer),
                          ("engine.targets", arguments.targets), ("engine.budget.kind", arguments.budget),
                          ("output_dir", arguments.output), ("cache_dir", arguments.cache_dir),
                          ("artifacts_dir", arguments.artifacts)]:
        _set(fields, dotted, value)
    for key, value in arguments.option:
        _set(fields, f"method.{key}", value)
    if arguments.eval_dense:
        fields["evaluate_dense"] = True
    if arguments.reconstruct and not isinstance(fields.get("engine", {}).get("reconstruction"), dict):
        _set(fields, "engine.reconstruction", {})
    if fields.get("trust_remote_code") and not arguments.trust_remote_code:
        raise ConfigError("trust_remote_code: the job file turns on running the model's own Python code; confirm it "
                          "with --trust-remote-code, or remove the setting")
    for flag in ("overwrite", "allow_unpinned", "trust_remote_code"):
        if getattr(arguments, flag):
            fields[flag] = True
    for dotted, value in [("zero_shot.tasks", arguments.zero_shot), ("zero_shot.data_dir", arguments.zero_shot_data),
                          ("zero_shot.limit", arguments.zero_shot_limit)]:
        _set(fields, dotted, value)
    if arguments.eval or arguments.eval_seqlen or arguments.eval_windows:
        datasets = arguments.eval or [item.get("dataset", "wiki-summaries") for item in fields.get("evaluation", [{}])]
        fields["evaluation"] = [{key: value for key, value in {"dataset": dataset, "seqlen": arguments.eval_seqlen,
                                                               "max_windows": arguments.eval_windows}.items()
                                 if value is not None} for dataset in datasets]
    try:
        return PruneJob.model_validate(fields)
    except ValidationError as error:  # the file checks of the preflight too: one run names every mistake
        problems = [*describe_validation_error(error), *field_problems(fields)]
        raise ConfigError("\n".join(dict.fromkeys(problems))) from None


def _prune(arguments: argparse.Namespace) -> int:
    from flows.compress import combination_label, model_label
    from flows.console import combination_row, print_job_result
    from pruning.io import exclusive_output
    from pruning.job import run_job
    from pruning.preflight import check_job

    job = job_from_arguments(arguments)
    check_job(job)
    with exclusive_output(job.output_dir, "output_dir"), \
            combination_row(str(job.output_dir), model_label(job.model), combination_label(job)) as row:
        record = run_job(job, progress=row)
        row.done(record.headline())
    print_job_result(record)
    return 0


def _compress(arguments: argparse.Namespace) -> int:
    from flows.compress import combination_label, compress, model_label
    from flows.console import SweepView, output_to_log, print_job_result
    from pruning.io import exclusive_output
    from pruning.job import prepare_inputs
    from pruning.preflight import check_job

    job = job_from_arguments(arguments)
    check_job(job)
    log_path = job.artifacts_dir / "logs" / f"compress-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with exclusive_output(job.output_dir, "output_dir"):  # a second writer fails here, before Prefect starts
        check_job(job)
        prepare_inputs(job)  # the model, calibration windows and texts checked before Prefect starts
        # Prefect's own log (a failed task's traceback included) goes to the log file; the terminal shows the
        # job's row, then its result or one error line.
        with output_to_log(log_path, arguments.verbose) as terminal:
            view = SweepView(terminal.err, transient=True)
            view.add(str(job.output_dir), model_label(job.model), combination_label(job))
            with view.live():
                result = compress(job)
        print_job_result(result.record())
    return 0
