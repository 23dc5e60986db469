"""`pruneflow eval`: perplexity (and zero-shot accuracy) of a dense or pruned model, through the same steps and
artifact store as a job's evaluation; and `pruneflow bench`: the speed benchmark of a model and its pruned forms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import TypeAdapter

from flows.cli.common import Commands, add_model_option, add_store_options, choices
from pruning.config import EngineConfig, EvaluationConfig, ZeroShotConfig
from pruning.errors import ConfigError


def add_commands(commands: Commands) -> None:
    evaluate = commands.add_parser("eval", help="perplexity (and zero-shot accuracy) of a model")
    add_model_option(evaluate)
    evaluate.add_argument("--dataset", action="append", help="evaluation dataset (repeatable; default wiki-summaries)")
    evaluate.add_argument("--seqlen", type=int, default=512)
    evaluate.add_argument("--max-windows", type=int, default=64)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", choices=choices(EngineConfig, "device"), default="auto")
    evaluate.add_argument("--tasks", help="also lm-eval zero-shot tasks, comma-separated (e.g. piqa,arc_easy)")
    evaluate.add_argument("--data-dir", type=Path, help="local copy of the task datasets (else the hub)")
    evaluate.add_argument("--limit", type=int, help="first N documents of each zero-shot task")
    add_store_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    bench = commands.add_parser("bench", help="speed and memory of a dense model and its pruned forms (JSON)")
    add_model_option(bench, "the dense model, measured first")
    bench.add_argument("--pruned", type=Path, action="append", default=[], metavar="DIR",
                       help="a pruned model directory, or a folder of them (repeatable)")
    bench.add_argument("--params", type=Path,
                       help="take the settings from this params file's bench section (shapes, rounds, run times, "
                            "dtypes: what `pruneflow sweep` and `dvc repro` measure); the options below override it")
    bench.add_argument("--devices", help="comma-separated (default cpu,cuda); an absent CUDA is reported skipped")
    bench.add_argument("--min-run-time", type=float,
                       help="seconds of timing per case, form and dense reference together (default 5)")
    bench.add_argument("--max-run-time", type=float,
                       help="GEMM cases: at most this many seconds while the IQR exceeds 10%% of the median "
                            "(default 20)")
    bench.add_argument("--rounds", type=int, help="alternations of form and dense model per case (default 7)")
    bench.add_argument("--cpu-dtypes",
                       help="comma-separated: fastest (bf16 where the CPU has it natively, else fp32; the default), "
                            "float32, bfloat16")
    bench.add_argument("--output", type=Path, required=True, help="JSON file to write")
    add_store_options(bench)
    bench.set_defaults(handler=_bench)


def _evaluate(arguments: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pruning.data.corpora import check_text_readable, check_text_source
    from pruning.evaluation.zero_shot import check_zero_shot_tasks
    from pruning.job import evaluate_model
    from pruning.machine import Machine
    from pruning.models.sources import check_model_source
    from pruning.preflight import check_local_architecture
    from pruning.store import ArtifactStore

    check_model_source(arguments.model, "model", arguments.allow_unpinned)
    check_local_architecture(arguments.model)
    try:
        evaluations = TypeAdapter(tuple[EvaluationConfig, ...]).validate_python(
            [{"dataset": dataset, "seqlen": arguments.seqlen, "max_windows": arguments.max_windows,
              "batch_size": arguments.batch_size} for dataset in (arguments.dataset or ["wiki-summaries"])])
    except ValidationError as error:  # the options' names: --seqlen, --max-windows, --batch-size
        first = error.errors()[0]
        raise ConfigError(f"--{str(first['loc'][-1]).replace('_', '-')}: {first['msg']}") from None
    for evaluation in evaluations:
        try:
            check_text_source(evaluation.dataset)
        except ConfigError as error:
            raise ConfigError(f"--dataset: {error}") from None
        check_text_readable(evaluation.dataset, evaluation.text_field, "--dataset")
    zero_shot = (ZeroShotConfig(tasks=tuple(arguments.tasks.split(",")), data_dir=arguments.data_dir,
                                limit=arguments.limit) if arguments.tasks else None)
    if zero_shot is not None:
        check_zero_shot_tasks(zero_shot.tasks, zero_shot.data_dir)
    result = evaluate_model(arguments.model, evaluations, zero_shot, Machine.resolve(arguments.device, "float32"),
                            ArtifactStore(arguments.artifacts), arguments.cache_dir)
    print(json.dumps(result.model_dump(mode="json", exclude={"model"}), indent=2))
    return 0


def _bench(arguments: argparse.Namespace) -> int:
    """Benchmark the dense model, then every pruned directory given (or found one level under a folder)."""
    from pydantic import ValidationError

    from flows.params import load_params
    from pruning.io import check_output_path
    from pruning.models.sources import check_model_source
    from pruning.preflight import check_local_architecture
    from pruning.speed import SpeedSettings, benchmark, model_directories
    from pruning.steps import fetch

    check_output_path(arguments.output, "--output", directory=False)
    given = {"min_run_time": arguments.min_run_time, "max_run_time": arguments.max_run_time,
             "rounds": arguments.rounds}
    if arguments.devices is not None:
        given["devices"] = tuple(arguments.devices.split(","))
        unknown = [device for device in given["devices"] if device not in ("cpu", "cuda")]
        if unknown:
            raise ConfigError(f"--devices: unknown {', '.join(unknown)}; use cpu, cuda or cpu,cuda")
    if arguments.cpu_dtypes is not None:
        given["cpu_dtypes"] = tuple(arguments.cpu_dtypes.split(","))
    base = load_params(arguments.params).bench.settings().model_dump() if arguments.params is not None else {}
    try:
        settings = SpeedSettings.model_validate(
            {**base, **{field: value for field, value in given.items() if value is not None}})
    except ValidationError as error:
        field = error.errors()[0]["loc"][0] if error.errors()[0]["loc"] else "max_run_time"
        raise ConfigError(f"--{str(field).replace('_', '-')}: {error.errors()[0]['msg']}") from None
    missing = [path for path in arguments.pruned if not path.exists()]
    if missing:
        raise ConfigError(f"--pruned: '{missing[0]}' is neither a pruned model directory nor a folder of them")
    check_model_source(arguments.model, "model", arguments.allow_unpinned)
    check_local_architecture(arguments.model)
    for folder in arguments.pruned:
        for directory in model_directories(folder):
            check_local_architecture(str(directory), "--pruned")
    dense = fetch(arguments.model, arguments.cache_dir).path
    benchmark([dense, *arguments.pruned], settings, arguments.output, dense)
    print(f"wrote {arguments.output}")
    return 0
