"""A pruning job as one sequence of typed steps (`pruning.steps`), the same for every driver.

    run_job(job)                       `pruneflow prune`: each step called in this process
    run_job(job, PrefectRunner(...))   the `compress` flow: each step called through its Prefect task
    run_job(job, calibration=...)      the DVC `prune` stage, with the calibration stage's windows

Order matters for the user: every check that can fail (the job's files, the model's architecture and context, the
calibration and evaluation texts) runs before the first weight is pruned, and the output folder appears only once
it is complete. `evaluate_model` is the evaluation half alone (`pruneflow eval`, the sweep's dense baseline, the DVC
evaluate stage).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from pruning import steps
from pruning.config import EvaluationConfig, PruneJob, ZeroShotConfig
from pruning.errors import ConfigError
from pruning.evaluation.accuracy import AccuracyResult
from pruning.evaluation.perplexity import PerplexityResult
from pruning.evaluation.zero_shot import ZeroShotResult
from pruning.io import exclusive_output
from pruning.machine import Machine
from pruning.methods.registry import is_structured
from pruning.preflight import check_context_length, check_job, check_model
from pruning.record import PruneRecord
from pruning.store import ArtifactStore

Output = TypeVar("Output")


class JobProgress(Protocol):
    """What a driver shows while a job runs (the console row of `pruneflow prune` and the flows)."""

    def stage(self, name: str) -> None: ...

    def blocks(self, total: int) -> None: ...

    def block_done(self, index: int) -> None: ...


class Silent:
    """A `JobProgress` that shows nothing."""

    def stage(self, name: str) -> None:
        return None

    def blocks(self, total: int) -> None:
        return None

    def block_done(self, index: int) -> None:
        return None


class StepRunner:
    """Calls each step and adds its wall time to `seconds[step name]`; `call` is what a driver changes (the Prefect
    runner calls the step's task)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, step: Callable[..., Output], *args: Any, **kwargs: Any) -> Output:
        started = time.perf_counter()
        try:
            return self.call(step, *args, **kwargs)
        finally:
            self.seconds[step.__name__] = self.seconds.get(step.__name__, 0.0) + time.perf_counter() - started

    def call(self, step: Callable[..., Output], *args: Any, **kwargs: Any) -> Output:
        return step(*args, **kwargs)


class ModelEvaluation(BaseModel):
    """A model's perplexities (one per evaluation text) and zero-shot accuracies; a vision model's accuracies (one
    per evaluation image set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: steps.ModelRef
    perplexity: list[PerplexityResult]
    zero_shot: ZeroShotResult | None
    accuracy: list[AccuracyResult] = []


EvaluationInput = steps.EvaluationText | steps.EvaluationImages


def _prepare_evaluations(run: StepRunner, model: steps.ModelRef, evaluations: tuple[EvaluationConfig, ...],
                         store: ArtifactStore, cache_dir: Path) -> list[EvaluationInput]:
    """Each evaluation's tokenized text, or a vision model's prepared images."""
    if model.modality == "image":
        return [run(steps.prepare_evaluation_images, model, item, store) for item in evaluations]
    return [run(steps.prepare_evaluation_text, model, item, store, cache_dir) for item in evaluations]


def _evaluations(run: StepRunner, model: steps.ModelRef, inputs: list[EvaluationInput],
                 evaluations: tuple[EvaluationConfig, ...], zero_shot: ZeroShotConfig | None, machine: Machine,
                 store: ArtifactStore) -> ModelEvaluation:
    pairs = list(zip(inputs, evaluations, strict=True))
    perplexity = [run(steps.evaluate, model, text, item, machine, store).result
                  for text, item in pairs if isinstance(text, steps.EvaluationText)]
    accuracy = [run(steps.evaluate_images, model, images, item, machine, store).result
                for images, item in pairs if isinstance(images, steps.EvaluationImages)]
    accuracies = run(steps.evaluate_zero_shot, model, zero_shot, machine, store).result if zero_shot else None
    return ModelEvaluation(model=model, perplexity=perplexity, zero_shot=accuracies, accuracy=accuracy)


def prepare_inputs(job: PruneJob) -> None:
    """A job's first steps, in this process: fetch the model and check it, build the calibration windows and the
    evaluation texts (each into the artifact store). A driver that hands the job to Prefect runs this first, so that
    a corpus too small for num_samples or an unreadable text fails before Prefect or MLflow start; the flow's tasks
    then reuse what the store holds."""
    store = ArtifactStore(job.artifacts_dir)
    model = steps.fetch(job.model, job.cache_dir)
    check_model(job, model.path)
    if job.method.needs_calibration:
        steps.calibrate(model, job.calibration, store, job.cache_dir)
    _prepare_evaluations(StepRunner(), model, job.evaluation, store, job.cache_dir)


def run_job(job: PruneJob, run: StepRunner | None = None, progress: JobProgress | None = None,
            calibration: steps.CalibrationRef | None = None) -> PruneRecord:
    """Prune, evaluate and export `job`; return the record written to `<output_dir>/pruneflow.json`.

    `calibration`, when given (the DVC calibrate stage's output), is used instead of sampling windows; it must
    match the job's calibration settings."""
    check_job(job)
    with exclusive_output(job.output_dir, "output_dir"):
        check_job(job)  # again under the lock: a run that held it may have filled the folder meanwhile
        return _run_job(job, run or StepRunner(), progress or Silent(), calibration)


def _run_job(job: PruneJob, run: StepRunner, progress: JobProgress,
             calibration: steps.CalibrationRef | None) -> PruneRecord:
    store, machine = ArtifactStore(job.artifacts_dir), Machine.resolve(job.engine.device, job.engine.forward_dtype)
    progress.stage("fetch")
    model = run(steps.fetch, job.model, job.cache_dir)
    check_model(job, model.path)
    if not job.method.needs_calibration:
        calibration = None
    elif calibration is not None:
        check_calibration_matches(calibration, job)
    else:
        progress.stage("calibrate")
        calibration = run(steps.calibrate, model, job.calibration, store, job.cache_dir)
    texts = _prepare_evaluations(run, model, job.evaluation, store, job.cache_dir)
    dense = ModelEvaluation(model=model, perplexity=[], zero_shot=None)
    if job.evaluate_dense:
        progress.stage("dense evaluation")
        dense = _evaluations(run, model, texts, job.evaluation, job.zero_shot, machine, store)
    progress.blocks(model.num_blocks)
    blocks = run(steps.prune, model, calibration, job.method, job.engine, machine, store, job.trust_remote_code,
                 progress.block_done)
    progress.stage("assemble")
    pruned = run(steps.assemble, model, blocks, is_structured(job.method.method), store, job.trust_remote_code)
    progress.stage("perplexity" + (" + zero-shot" if job.zero_shot else ""))
    evaluation = _evaluations(run, pruned, texts, job.evaluation, job.zero_shot, machine, store)
    record = PruneRecord.build(job, blocks.report, machine, blocks.model_parameters, model.digest, model.origin,
                               calibration.manifest if calibration is not None else None, pruned.structured,
                               evaluation.perplexity, dense.perplexity, evaluation.zero_shot, dense.zero_shot,
                               dict(run.seconds), evaluation.accuracy, dense.accuracy)
    progress.stage("export")
    run(steps.export, pruned, record, job.output_dir)
    return record


def evaluate_model(spec: str, evaluations: tuple[EvaluationConfig, ...], zero_shot: ZeroShotConfig | None,
                   machine: Machine, store: ArtifactStore, cache_dir: Path, run: StepRunner | None = None,
                   progress: JobProgress | None = None) -> ModelEvaluation:
    """Perplexities (block by block from disk) and, when configured, zero-shot accuracies of an unpruned or already
    pruned model, through the same steps (and store) as a job's evaluation."""
    run, progress = run or StepRunner(), progress or Silent()
    progress.stage("fetch")
    model = run(steps.fetch, spec, cache_dir)
    if model.modality == "text":
        check_context_length(model.path, None, [item.seqlen for item in evaluations])
    texts = _prepare_evaluations(run, model, evaluations, store, cache_dir)
    progress.stage("perplexity" + (" + zero-shot" if zero_shot else ""))
    return _evaluations(run, model, texts, evaluations, zero_shot, machine, store)


def check_calibration_matches(calibration: steps.CalibrationRef, job: PruneJob) -> None:
    if calibration.holds_images:
        raise ConfigError("calibration: the calibration stage's folder holds images; the DVC stages take language "
                          "models only: prune a vision model with `pruneflow prune`")
    for key in ("num_samples", "seqlen", "seed"):
        if getattr(calibration.manifest, key) != getattr(job.calibration, key):
            raise ConfigError(f"calibration.{key}: the calibration set has {getattr(calibration.manifest, key)} but "
                              f"the job asks for {getattr(job.calibration, key)}; rebuild the calibration set")
