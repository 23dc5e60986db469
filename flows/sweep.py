"""Flow `sweep`: models x methods x sparsities from params.yaml, each combination a `compress` subflow.

With `dask.enabled`, combinations are submitted as tasks to prefect-dask's DaskTaskRunner (a
LocalCluster of `dask.workers` processes, or the cluster at `dask.address`) and run concurrently.
Results go to MLflow: one parent run for the sweep, one child run per combination.
"""


import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.compress import compress
from flows.params import SweepParams, load_params
from flows.tracking import SweepTracker
from pruning.config import EvaluationConfig, PruneJob
from pruning.corpora import source_fingerprint
from pruning.pipeline import peak_rss_megabytes
from tasks.artifacts import ArtifactStore
from tasks.evaluate import evaluate
from tasks.fetch import fetch_model


@flow(name="baseline")
def baseline(model: str, evaluation: tuple[EvaluationConfig, ...], cache_dir: str, device: str) -> list[dict[str, Any]]:
    """The dense model's perplexities, evaluated exactly as the pruned ones are."""
    dense = fetch_model(model, cache_dir)
    return [evaluate(dense.path, dense.digest, item, source_fingerprint(item.dataset), cache_dir, device)
            for item in evaluation]


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="combination-{job.output_dir.name}")
def run_combination(job: PruneJob, store: ArtifactStore) -> dict[str, Any]:
    """One combination on a task runner's worker (a Dask worker process when Dask is enabled)."""
    started = time.time()
    summary = compress(job, store)
    return {**summary, "started_at": started, "finished_at": time.time(), "peak_rss_mb": peak_rss_megabytes()}


@flow(name="sweep")
def sweep(params_path: str = "params.yaml") -> list[dict[str, Any]]:
    """Run the whole grid; return one summary per combination (dense baselines first)."""
    params = load_params(Path(params_path))
    store = ArtifactStore(root=params.paths.artifacts)
    tracker = SweepTracker(params.tracking.experiment)
    summaries: list[dict[str, Any]] = []
    with tracker.sweep_run(f"sweep | {Path(params_path).name}", params.model_dump(mode="json")):
        if params.dense_baseline:
            for model in params.models:
                results = baseline(model.source, params.evaluation, str(params.paths.cache), params.engine.device)
                tracker.log_dense(model.source, results)
                summaries.append({"model": model.source, "method": "dense", "pattern": "-", "target_sparsity": 0.0,
                                  "perplexity": results})
        for job, summary in zip(params.jobs(), run_combinations(params, store), strict=True):
            tracker.log_combination(job, summary, register=params.tracking.register_models)
            summaries.append(summary)
    return summaries


def run_combinations(params: SweepParams, store: ArtifactStore) -> list[dict[str, Any]]:
    jobs = params.jobs()
    if not params.dask.enabled:
        return [run_combination.fn(job, store) for job in jobs]
    futures = [run_combination.submit(job, store) for job in jobs]
    return [future.result() for future in futures]


def sweep_with_task_runner(params_path: str) -> list[dict[str, Any]]:
    """Run `sweep`, on a DaskTaskRunner when the params ask for Dask."""
    params = load_params(Path(params_path))
    if not params.dask.enabled:
        return sweep(params_path)
    from prefect_dask import DaskTaskRunner

    runner = (DaskTaskRunner(address=params.dask.address) if params.dask.address else
              DaskTaskRunner(cluster_kwargs={"n_workers": params.dask.workers, "threads_per_worker": 1,
                                             "processes": True}))
    return sweep.with_options(task_runner=runner)(params_path)  # type: ignore[arg-type]
