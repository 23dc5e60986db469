"""The DVC pipeline's stages (`pruneflow stage <name>`), one model (and method) at a time.

  fetch      the model as a safetensors directory at --output
  calibrate  the calibration windows and manifest at --output
  prune      every pattern x sparsity of one method, each a pruned model under --output/<combination>
  evaluate   perplexity of a model directory (or of every pruned model under it) into a metrics JSON
  bench      speed of a model directory (or of every pruned model under it), in each form, into a speed JSON
  report     all metrics (and speed files) into reports/: results.md, metrics.json, CSVs and PNG plots

DVC caches and versions what these write; they run the same library code as the Prefect flows.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flows.params import ModelEntry, SweepParams
from flows.report import dense_fields, record_fields
from pruning.data.calibration import build_calibration_set, load_calibration_set, save_calibration_set
from pruning.data.corpora import load_corpus
from pruning.errors import ConfigError
from pruning.io import atomic_directory, write_json
from pruning.models.sources import load_tokenizer
from pruning.pipeline import check_architecture, fetch_model, run_model_evaluation, run_prune_job
from pruning.record import RECORD_FILE, PruneRecord


def model_entry(params: SweepParams, name: str) -> ModelEntry:
    for model in params.models:
        if model.name == name:
            return model
    raise ConfigError(f"models: no model named '{name}'; params.yaml names {', '.join(m.name for m in params.models)}")


def fetch(params: SweepParams, name: str, output: Path) -> None:
    directory = fetch_model(model_entry(params, name).source, params.paths.cache)
    check_architecture(directory)
    with atomic_directory(output) as staging:
        shutil.copytree(directory, staging, dirs_exist_ok=True)


def calibrate(params: SweepParams, model_dir: Path, output: Path) -> None:
    settings = params.calibration
    corpus = load_corpus(settings.source, "calibration", params.paths.cache, settings.text_field)
    calibration = build_calibration_set(corpus, load_tokenizer(model_dir), settings.num_samples, settings.seqlen,
                                        settings.seed)
    save_calibration_set(calibration, output)


def prune(params: SweepParams, name: str, method: str, model_dir: Path, calibration_dir: Path, output: Path) -> None:
    model = ModelEntry(name=name, source=str(model_dir))
    calibration = load_calibration_set(calibration_dir)
    with atomic_directory(output) as staging:
        for job in params.method_jobs(model, method, staging):
            run_prune_job(job.model_copy(update={"evaluation": ()}), calibration=calibration)


def model_directories(model_dir: Path) -> list[Path]:
    """`model_dir` itself when it is a model, else the pruned model directories one level under it."""
    if (model_dir / "config.json").is_file():
        return [model_dir]
    return sorted(path.parent for path in model_dir.glob(f"*/{RECORD_FILE}"))


def evaluate(params: SweepParams, model_dir: Path, metrics: Path) -> None:
    """Metrics of one dense model directory, or of every pruned model directory under `model_dir`:
    perplexity per protocol, zero-shot accuracies (when params.zero_shot is set), parameters left,
    engine time, per-block reconstruction errors."""
    entries: dict[str, Any] = {}
    for directory in model_directories(model_dir):
        results, zero_shot = run_model_evaluation(str(directory), list(params.evaluation), params.zero_shot,
                                                  params.paths.cache, params.engine.device)
        record = PruneRecord.read_if_present(directory)
        fields = record_fields(record) if record is not None else dense_fields(directory)
        entries[directory.name if record is not None else "dense"] = {
            **fields, "perplexity": {result.protocol: result.perplexity for result in results}, "zero_shot": zero_shot}
    write_json(metrics, entries)


def bench(params: SweepParams, model_dir: Path, output: Path) -> None:
    """Speed of one dense model directory, or of every pruned model directory under `model_dir`, in each form
    on each device of params.bench.devices (an absent device is recorded as skipped, with the reason)."""
    from pruning.evaluation.speed import benchmark_models

    write_json(output, benchmark_models(model_directories(model_dir), params.bench.settings(), params.bench.devices))


def report(metrics_dir: Path, speed_dir: Path | None, output: Path, experiment: str | None = None) -> None:
    from flows.report import load_entries, load_speed, log_report, write_report

    write_report(load_entries(metrics_dir), load_speed(speed_dir), output)
    if experiment is not None:
        log_report(output, experiment)
