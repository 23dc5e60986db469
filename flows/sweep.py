"""Flow `sweep`: models x methods x sparsities from params.yaml, each combination a `compress` subflow.

With `dask.enabled`, combinations are submitted as tasks to prefect-dask's DaskTaskRunner (a LocalCluster of
`dask.workers` processes, or the cluster at `dask.address`) and run concurrently. Results go to MLflow: one parent
run for the sweep, one child run per combination; the comparison report (table and plots, `<paths.runs>/report`)
is logged to the parent run. With `bench.in_sweep` the speed of every form is measured first
(`<paths.runs>/speed/<model>.json`) and joins the report. `scheduled_sweep` is what `pruneflow serve` schedules: it
reads the params file at each run.
"""

# No `from __future__ import annotations` here: Prefect validates flow parameters from the annotations, and in a
# Dask worker (the flow pickled by value) string annotations cannot be resolved.
from collections.abc import Iterator
from pathlib import Path

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from flows.compress import CombinationResult, compress
from flows.console import combination_row
from flows.interrupts import cancel_stopped_flow_run, raise_if_stopped
from flows.params import SweepParams, load_params
from flows.report import ReportRow, load_speed, write_report
from flows.report_page import PAGE_FILE
from flows.tracking import SweepTracker
from pruning import steps
from pruning.config import PruneJob
from pruning.evaluation.accuracy import AccuracyResult
from pruning.evaluation.perplexity import PerplexityResult
from pruning.evaluation.zero_shot import ZeroShotResult
from pruning.job import evaluate_model
from pruning.machine import Machine
from pruning.store import ArtifactStore
from tasks.steps import PrefectRunner, benchmark_task


class BaselineResult(BaseModel):
    """A dense model's evaluation, done exactly as the pruned ones'."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    directory: Path
    perplexity: list[PerplexityResult]
    zero_shot: ZeroShotResult | None
    accuracy: list[AccuracyResult] = []


class SweepResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    baselines: list[BaselineResult]
    combinations: list[CombinationResult]


@flow(name="baseline", on_crashed=[cancel_stopped_flow_run])
def baseline(model: str, params: SweepParams) -> BaselineResult:
    """The dense model's perplexities (and zero-shot accuracies)."""
    machine = Machine.resolve(params.engine.device, params.engine.forward_dtype)
    with combination_row(dense_key(model), params.model_name(model), "dense") as row:
        evaluation = evaluate_model(model, params.evaluation, params.zero_shot, machine,
                                    ArtifactStore(params.paths.artifacts), params.paths.cache, PrefectRunner(), row)
        row.done(f"ppl {evaluation.perplexity[0].perplexity:.2f}" if evaluation.perplexity else
                 f"top-1 {evaluation.accuracy[0].top1:.4f}")
    return BaselineResult(model=model, directory=evaluation.model.path, perplexity=evaluation.perplexity,
                          zero_shot=evaluation.zero_shot, accuracy=evaluation.accuracy)


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="combination-{job.output_dir.name}")
def run_combination(job: PruneJob, threads: int | None = None) -> CombinationResult:
    """One combination on a task runner's worker (a Dask worker process when Dask is enabled), with `threads`
    torch threads when given."""
    if threads is not None:
        torch.set_num_threads(threads)
    return compress(job)


@flow(name="sweep", on_crashed=[cancel_stopped_flow_run])
def sweep(params: SweepParams, label: str = "params.yaml") -> SweepResult:
    """Run the whole grid: the dense baselines, then every combination; log them and the report to MLflow."""
    tracker = SweepTracker(params.tracking.experiment)
    baselines: list[BaselineResult] = []
    combinations: list[CombinationResult] = []
    with tracker.sweep_run(f"sweep | {label}", params.model_dump(mode="json")):
        if params.dense_baseline:
            for model in params.models:
                dense = baseline(model.source, params)
                raise_if_stopped()
                tracker.log_dense(dense)
                baselines.append(dense)
        for job, combination in zip(params.jobs, run_combinations(params), strict=True):
            tracker.log_combination(job, combination, register=params.tracking.register_models)
            combinations.append(combination)
        speed_dir = params.paths.runs / "speed"
        if params.bench.in_sweep:
            for model in params.models:
                fetched = steps.fetch(model.source, params.paths.cache)
                if fetched.modality == "image":  # the speed bench times language models (prefill, decode)
                    continue
                dense_dir = fetched.path
                pruned = [item.output_dir for item in combinations
                          if item.model == model.source and params.bench.measures(item.method)]
                with combination_row(speed_key(model.source), model.name, "speed") as row:
                    output = benchmark_task([dense_dir, *pruned], params.bench.sweep_settings(),
                                            speed_dir / f"{model.name}.json", dense_dir, row.model_measured)
                    row.done(output.name)
        rows = [ReportRow.dense(item.directory, params.model_name(item.model), item.perplexity, item.zero_shot,
                                item.accuracy) for item in baselines]
        rows += [ReportRow.of_record(item.record(), params.model_name(item.model)) for item in combinations]
        report = write_report(rows, load_speed(speed_dir), params.paths.runs / "report")
        tracker.mlflow.log_artifacts(str(report), artifact_path="report")
        tracker.mlflow.set_tags({"report": tracker.mlflow.get_artifact_uri(f"report/{PAGE_FILE}"),
                                 "report_path": str((report / PAGE_FILE).resolve())})
    return SweepResult(baselines=baselines, combinations=combinations)


@flow(name="scheduled-sweep", on_crashed=[cancel_stopped_flow_run])
def scheduled_sweep(params_path: str = "params.yaml") -> SweepResult:
    """The sweep of the params file as it is when the schedule fires (`pruneflow serve`)."""
    return sweep(load_params(Path(params_path)), Path(params_path).name)


def dense_key(source: str) -> str:
    """The console row of a model's dense baseline (combinations are keyed by their output folder)."""
    return f"dense:{source}"


def speed_key(source: str) -> str:
    """The console row of a model's speed stage."""
    return f"speed:{source}"


def run_combinations(params: SweepParams) -> Iterator[CombinationResult]:
    """Each combination's result, in the order of `params.jobs`, as soon as it (and those before it) finished, so
    that a stopped sweep has logged every combination it completed."""
    if not params.dask.enabled:
        for job in params.jobs:
            result = run_combination.fn(job)
            raise_if_stopped()
            yield result
        return
    threads = None if params.dask.address else params.dask.threads_per_worker
    futures = [run_combination.submit(job, threads) for job in params.jobs]
    for future in futures:
        yield future.result()


def sweep_with_task_runner(params: SweepParams, label: str = "params.yaml") -> SweepResult:
    """Run `sweep`, on a DaskTaskRunner when the params ask for Dask."""
    if not params.dask.enabled:
        return sweep(params, label)
    from prefect_dask import DaskTaskRunner

    # Local workers get their share of the cores before they import torch (OpenMP reads these at start).
    threads = str(params.dask.threads_per_worker)
    runner = (DaskTaskRunner(address=params.dask.address) if params.dask.address else
              DaskTaskRunner(cluster_kwargs={"n_workers": params.dask.workers, "threads_per_worker": 1,
                                             "processes": True,
                                             "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}}))
    return sweep.with_options(task_runner=runner)(params, label)  # type: ignore[arg-type]
