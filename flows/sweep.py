"""Flow `sweep`: models x methods x sparsities from params.yaml, each combination a `compress` subflow.

With `dask.enabled`, combinations are submitted as tasks to prefect-dask's DaskTaskRunner (a
LocalCluster of `dask.workers` processes, or the cluster at `dask.address`) and run concurrently.
Results go to MLflow: one parent run for the sweep, one child run per combination; the comparison report
(table and plots, `<paths.runs>/report`) is logged to the parent run. With `bench.in_sweep` the speed of every
form is measured first (`<paths.runs>/speed/<model>.json`) and joins the report.
"""


import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.compress import compress
from flows.console import combination_row
from flows.interrupts import cancel_stopped_flow_run, raise_if_stopped
from flows.params import SweepParams, load_params
from flows.report import load_speed, sweep_entries, write_report
from flows.report_page import PAGE_FILE
from flows.tracking import SweepTracker
from pruning.config import EvaluationConfig, PruneJob, ZeroShotConfig
from pruning.data.corpora import source_fingerprint
from pruning.evaluation.zero_shot import zero_shot_fingerprint
from pruning.record import peak_rss_megabytes
from tasks.artifacts import ArtifactStore
from tasks.bench import benchmark
from tasks.evaluate import evaluate, evaluate_zero_shot
from tasks.fetch import fetch_model


@flow(name="baseline", on_crashed=[cancel_stopped_flow_run])
def baseline(model: str, evaluation: tuple[EvaluationConfig, ...], zero_shot: ZeroShotConfig | None, cache_dir: str,
             device: str, store: ArtifactStore) -> dict[str, Any]:
    """The dense model's perplexities (and zero-shot accuracies), evaluated exactly as the pruned ones are."""
    dense = fetch_model(model, cache_dir)
    perplexities = [evaluate(dense.path, dense.digest, item, source_fingerprint(item.dataset), cache_dir, device,
                             store) for item in evaluation]
    accuracies = (evaluate_zero_shot(dense.path, dense.digest, zero_shot,
                                     zero_shot_fingerprint(zero_shot.tasks, zero_shot.data_dir), device, store)
                  if zero_shot is not None else None)
    return {"perplexity": perplexities, "zero_shot": accuracies}


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="combination-{job.output_dir.name}")
def run_combination(job: PruneJob, store: ArtifactStore, threads: int | None = None) -> dict[str, Any]:
    """One combination on a task runner's worker (a Dask worker process when Dask is enabled), with `threads`
    torch threads when given."""
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.time()
    summary = compress(job, store)
    return {**summary, "started_at": started, "finished_at": time.time(), "peak_rss_mb": peak_rss_megabytes(),
            "threads": torch.get_num_threads()}


@flow(name="sweep", on_crashed=[cancel_stopped_flow_run])
def sweep(params_path: str = "params.yaml") -> list[dict[str, Any]]:
    """Run the whole grid; return one summary per combination (dense baselines first)."""
    params = load_params(Path(params_path))
    store = ArtifactStore(root=params.paths.artifacts)
    tracker = SweepTracker(params.tracking.experiment)
    summaries: list[dict[str, Any]] = []
    with tracker.sweep_run(f"sweep | {Path(params_path).name}", params.model_dump(mode="json")):
        if params.dense_baseline:
            for model in params.models:
                with combination_row(dense_key(model.source), model.name, "dense") as row:
                    row.stage("perplexity" + (" + zero-shot" if params.zero_shot else ""))
                    results = baseline(model.source, params.evaluation, params.zero_shot, str(params.paths.cache),
                                       params.engine.device, store)
                    raise_if_stopped()
                    row.done(f"ppl {results['perplexity'][0]['perplexity']:.2f}")
                tracker.log_dense(model.source, results)
                summaries.append({"model": model.source, "method": "dense", "pattern": "-", "target_sparsity": 0.0,
                                  **results})
        for job, summary in zip(params.jobs(), run_combinations(params, store), strict=True):
            tracker.log_combination(job, summary, register=params.tracking.register_models)
            summaries.append(summary)
        if params.bench.in_sweep:
            for model in params.models:
                pruned = [summary["output_dir"] for summary in summaries
                          if summary.get("model") == model.source and "output_dir" in summary]
                benchmark(model.source, pruned, params.bench.settings(), params.bench.devices, str(params.paths.cache),
                          str(params.paths.runs / "speed" / f"{model.name}.json"))
        report = write_report(sweep_entries(summaries, {model.source: model.name for model in params.models},
                                            params.paths.cache),
                              load_speed(params.paths.runs / "speed"), params.paths.runs / "report")
        tracker.mlflow.log_artifacts(str(report), artifact_path="report")
        tracker.mlflow.set_tags({"report": tracker.mlflow.get_artifact_uri(f"report/{PAGE_FILE}"),
                                 "report_path": str((report / PAGE_FILE).resolve())})
    return summaries


def dense_key(source: str) -> str:
    """The console row of a model's dense baseline (combinations are keyed by their output folder)."""
    return f"dense:{source}"


def run_combinations(params: SweepParams, store: ArtifactStore) -> Iterator[dict[str, Any]]:
    """Each combination's summary, in the order of `params.jobs()`, as soon as it (and those before it) finished,
    so that a stopped sweep has logged every combination it completed."""
    jobs = params.jobs()
    if not params.dask.enabled:
        for job in jobs:
            summary = run_combination.fn(job, store)
            raise_if_stopped()
            yield summary
        return
    threads = None if params.dask.address else params.dask.threads_per_worker
    futures = [run_combination.submit(job, store, threads) for job in jobs]
    for future in futures:
        yield future.result()


def sweep_with_task_runner(params_path: str) -> list[dict[str, Any]]:
    """Run `sweep`, on a DaskTaskRunner when the params ask for Dask."""
    params = load_params(Path(params_path))
    if not params.dask.enabled:
        return sweep(params_path)
    from prefect_dask import DaskTaskRunner

    # Local workers get their share of the cores before they import torch (OpenMP reads these at start).
    threads = str(params.dask.threads_per_worker)
    runner = (DaskTaskRunner(address=params.dask.address) if params.dask.address else
              DaskTaskRunner(cluster_kwargs={"n_workers": params.dask.workers, "threads_per_worker": 1,
                                             "processes": True,
                                             "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}}))
    return sweep.with_options(task_runner=runner)(params_path)  # type: ignore[arg-type]
