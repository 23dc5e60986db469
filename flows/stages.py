"""The DVC pipeline's stages (`pruneflow stage <name>`), one model (and method) at a time, each calling the steps of
`pruning.job` that every driver calls, with the artifact store of params.yaml (`paths.artifacts`) shared with
`pruneflow prune` and the sweep:

  fetch      steps.fetch: the model as a safetensors folder, copied to --output
  calibrate  steps.calibrate: the calibration windows and manifest, copied to --output
  prune      run_job without evaluation for every pattern x sparsity of one method, on the calibrate stage's
             windows: each a pruned model under --output/<combination>
  evaluate   evaluate_model on a model folder (or every pruned model under it): one report row per model under
             --rows and its flat metrics under --metrics (DVC metrics with the same columns for every method)
  bench      speed.benchmark of a model folder (or every pruned model under it), in each form, into --output
  report     every report row (and speed file) into reports/: results.md, CSVs, PNG plots, index.html

DVC caches and versions what these write.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from flows.params import ModelEntry, SweepParams
from flows.report import ReportRow, write_row
from pruning import steps
from pruning.data.calibration import load_calibration_manifest
from pruning.errors import ConfigError
from pruning.io import atomic_directory, check_output_path, exclusive_output
from pruning.job import check_calibration_matches, evaluate_model, run_job
from pruning.machine import Machine
from pruning.preflight import check_architecture
from pruning.record import PruneRecord
from pruning.speed import benchmark, model_directories
from pruning.store import ArtifactStore


def model_entry(params: SweepParams, name: str) -> ModelEntry:
    for model in params.models:
        if model.name == name:
            return model
    raise ConfigError(f"models: no model named '{name}'; params.yaml names {', '.join(m.name for m in params.models)}")


@contextlib.contextmanager
def _new_output(output: Path, params: SweepParams, **inputs: Path) -> Iterator[None]:
    """DVC removes a stage's outputs before it runs: a folder that is there and not empty is not DVC's to replace.
    Nor may the output be, or lie inside, an input of the stage or the params' cache and artifact store; it is
    locked while the stage writes it (a second run of the stage fails at once)."""
    folders = {**{f"--{name.replace('_', '-')}": path for name, path in inputs.items()},
               "paths.cache": params.paths.cache, "paths.artifacts": params.paths.artifacts}
    check_output_path(output, "--output", directory=True, inputs=folders)
    with exclusive_output(output, "--output"):
        check_output_path(output, "--output", directory=True, inputs=folders)  # again, now that it is ours
        yield


def fetch(params: SweepParams, name: str, output: Path) -> None:
    source = model_entry(params, name).source
    with _new_output(output, params, **({"model": Path(source)} if "://" not in source else {})):
        model = steps.fetch(source, params.paths.cache)
        check_architecture(model.path)
        with atomic_directory(output) as staging:
            shutil.copytree(model.path, staging, dirs_exist_ok=True)


def calibrate(params: SweepParams, model_dir: Path, output: Path) -> None:
    with _new_output(output, params, model_dir=model_dir):
        model = steps.fetch(str(model_dir), params.paths.cache)
        calibration = steps.calibrate(model, params.calibration, ArtifactStore(params.paths.artifacts),
                                      params.paths.cache)
        with atomic_directory(output) as staging:
            shutil.copytree(calibration.directory, staging, dirs_exist_ok=True)


def prune(params: SweepParams, name: str, method: str, model_dir: Path, calibration_dir: Path, output: Path) -> None:
    """Every combination of `method` on the DVC model folder, from the calibrate stage's windows."""
    with _new_output(output, params, model_dir=model_dir, calibration_dir=calibration_dir):
        _prune(params, ModelEntry(name=name, source=str(model_dir)), method, calibration_dir, output)


def _prune(params: SweepParams, model: ModelEntry, method: str, calibration_dir: Path, output: Path) -> None:
    calibration = steps.CalibrationRef(directory=calibration_dir, manifest=load_calibration_manifest(calibration_dir))
    with atomic_directory(output) as staging:
        for job in params.method_jobs(model, method, staging):
            job = job.model_copy(update={"evaluation": (), "zero_shot": None, "evaluate_dense": False})
            check_calibration_matches(calibration, job)
            run_job(job, calibration=calibration)


def evaluate(params: SweepParams, name: str, model_dir: Path, rows: Path, metrics: Path) -> None:
    """A report row and flat metrics for model `name`'s dense folder, or for every pruned model folder under it."""
    model_entry(params, name)
    store = ArtifactStore(params.paths.artifacts)
    machine = Machine.resolve(params.engine.device, params.engine.forward_dtype)
    for directory in model_directories(model_dir):
        evaluation = evaluate_model(str(directory), params.evaluation, params.zero_shot, machine, store,
                                    params.paths.cache)
        record = PruneRecord.read_if_present(directory)
        if record is None:
            write_row(ReportRow.dense(directory, name, evaluation.perplexity, evaluation.zero_shot), "dense", rows,
                      metrics)
            continue
        # the evaluation of this stage's params (the prune stage's record holds none)
        evaluated = record.model_copy(update={"perplexity": evaluation.perplexity, "zero_shot": evaluation.zero_shot})
        write_row(ReportRow.of_record(evaluated, name), directory.name, rows, metrics)


def bench(params: SweepParams, model_dir: Path, dense_dir: Path, output: Path) -> None:
    """Speed of one dense model folder, or of every pruned model folder under `model_dir`, in each form on each
    device of params.bench.devices (an absent device is recorded as skipped, with the reason), every case paired
    with the dense model of `dense_dir` in this process."""
    benchmark([model_dir], params.bench.settings(), output, dense_dir)


def report(rows_dir: Path, speed_dir: Path | None, output: Path, experiment: str | None = None) -> None:
    from flows.report import load_rows, load_speed, log_report, write_report

    write_report(load_rows(rows_dir), load_speed(speed_dir), output)
    if experiment is not None:
        log_report(output, experiment)
