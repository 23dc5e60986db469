"""MLflow lineage for sweeps: one parent run per sweep, one child run per model x method combination.

Tracking URI: MLFLOW_TRACKING_URI if set, else `sqlite:///<project>/mlruns.db` (embedded; artifacts under
`<project>/mlruns`). Each child logs the whole validated config as params, and what ran (resolved device and
forward dtype, fp32 matmul precision; CPU model and flags, GPU, threads as tags); perplexity per dataset with the
protocol in the key; achieved sparsity, parameter count, step wall times, peak RSS; per-block reconstruction error
as step metrics; its calibration and evaluation data as dataset inputs with their digests; git commit, dvc.lock
stage hash and pruneflow version as tags; pruneflow.json and plots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pruning import __version__
from pruning.config import PruneJob
from pruning.data.images import ImageManifest
from pruning.evaluation.accuracy import AccuracyResult
from pruning.evaluation.perplexity import PerplexityResult
from pruning.evaluation.zero_shot import ZeroShotResult
from pruning.machine import Machine

if TYPE_CHECKING:
    from flows.compress import CombinationResult
    from flows.sweep import BaselineResult

DEFAULT_DATABASE = "mlruns.db"


def tracking_uri(project_root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project_root / DEFAULT_DATABASE).resolve()}"


def redacted(uri: str) -> str:
    """The URI as it may be printed: a password in it replaced by ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def metric_key(text: str) -> str:
    """MLflow keys allow alphanumerics, _ - . / and spaces."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]+", "_", text).strip("_")


def perplexity_key(result: PerplexityResult) -> str:
    settings = result.settings
    return metric_key(f"ppl.token.{settings.dataset}.seqlen{settings.seqlen}.windows{result.windows}")


def flatten(fields: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}."""
    if isinstance(fields, dict):
        flat: dict[str, str] = {}
        for key, value in fields.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): json.dumps(fields) if isinstance(fields, (list, tuple)) else str(fields)}


def git_commit(project_root: Path) -> str:
    completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root, capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else "unknown"


def dvc_stage_hash(project_root: Path, stage_prefix: str) -> str:
    """sha256 of the dvc.lock entries whose stage name starts with `stage_prefix`, or 'none'."""
    lock = project_root / "dvc.lock"
    if not lock.is_file():
        return "none"
    import yaml

    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    chosen = {name: entry for name, entry in stages.items() if name.startswith(stage_prefix)}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16] if chosen else "none"


class SweepTracker:
    """Writes a sweep's runs to MLflow."""

    def __init__(self, experiment: str, project_root: Path | None = None) -> None:
        import mlflow

        self.mlflow = mlflow
        self.root = (project_root or Path.cwd()).resolve()
        mlflow.set_tracking_uri(tracking_uri(self.root))
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        existing = mlflow.get_experiment_by_name(experiment)
        experiment_id = existing.experiment_id if existing else mlflow.create_experiment(
            experiment, artifact_location=(self.root / "mlruns").as_uri())
        mlflow.set_experiment(experiment_id=experiment_id)

    @contextlib.contextmanager
    def sweep_run(self, name: str, params: dict[str, Any]) -> Iterator[str]:
        with self._run(name) as run:
            self.mlflow.log_params(flatten(params))
            self.mlflow.set_tags(self._tags("prune"))
            yield run.info.run_id

    @contextlib.contextmanager
    def _run(self, name: str, nested: bool = False) -> Iterator[Any]:
        """An MLflow run that ends FINISHED, FAILED on an error, or KILLED when the user stopped the sweep (Ctrl-C or
        SIGTERM: flows.interrupts.Stopped, a KeyboardInterrupt)."""
        run = self.mlflow.start_run(run_name=name, nested=nested)
        try:
            yield run
        except KeyboardInterrupt:
            if not nested:  # children the signal caught between their creation and their `with` block
                self._kill_running_children(run.info.run_id, run.info.experiment_id)
            self.mlflow.end_run(status="KILLED")
            raise
        except BaseException:
            self.mlflow.end_run(status="FAILED")
            raise
        self.mlflow.end_run()

    def _kill_running_children(self, parent_run_id: str, experiment_id: str) -> None:
        client = self.mlflow.MlflowClient()
        for child in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                                         "and attributes.status = 'RUNNING'"):
            client.set_terminated(child.info.run_id, status="KILLED")

    def _tags(self, stage_prefix: str) -> dict[str, str]:
        return {"git_commit": git_commit(self.root), "dvc_lock_stage": dvc_stage_hash(self.root, stage_prefix),
                "pruneflow_version": __version__}

    def log_dense(self, result: BaselineResult) -> str:
        with self._run(f"dense | {result.model.split('/')[-1]}", nested=True) as run:
            self.mlflow.log_params({"model": result.model, "method": "dense"})
            self.mlflow.set_tags(self._tags("evaluate"))
            self._log_evaluations(result.perplexity)
            self._log_accuracy(result.accuracy)
            self._log_zero_shot(result.zero_shot)
            return str(run.info.run_id)

    def log_combination(self, job: PruneJob, result: CombinationResult, register: bool = False) -> str:
        record = result.record()
        name = f"{job.method.method} {job.method.pattern} {job.method.target_sparsity:g} | {job.model.split('/')[-1]}"
        with self._run(name, nested=True) as run:
            self.mlflow.log_params(flatten(job.model_dump(mode="json")))
            self.mlflow.log_params(machine_params(record.machine))
            self.mlflow.set_tags({**self._tags("prune"), **machine_tags(record.machine)})
            self._log_evaluations(result.perplexity)
            self._log_accuracy(result.accuracy)
            self._log_zero_shot(result.zero_shot)
            sparsity, parameters = record.decoder_linear_sparsity, record.decoder_linear_parameters
            self.mlflow.log_metrics({
                "decoder_linear_sparsity": sparsity, "decoder_linear_parameters": parameters,
                "decoder_linear_nonzero_parameters": round(parameters * (1 - sparsity)),
                "engine_forward_seconds": record.engine.forward_seconds,
                "engine_solve_seconds": record.engine.solve_seconds,
                "blocks_computed": result.blocks_computed, "blocks_reused": result.blocks_reused,
                "peak_rss_mb": result.peak_rss_mb,
                **{f"seconds.{step}": value for step, value in result.step_seconds.items()},
            })
            errors = record.engine.block_errors()
            self._log_series(run.info.run_id, {
                "block_relative_error": list(enumerate(errors)),
                # data-free methods measure no error
                "layer_relative_error": [(step, layer.relative_error) for step, layer in
                                         enumerate(record.engine.layers) if layer.relative_error is not None],
                "layer_sparsity": [(step, layer.sparsity) for step, layer in enumerate(record.engine.layers)]})
            calibration = record.inputs.calibration
            if isinstance(calibration, ImageManifest):
                self._log_input(calibration.source, calibration.sha256, "calibration")
            elif calibration is not None:
                self._log_input(calibration.corpus.source, calibration.windows_sha256, "calibration")
            self.mlflow.log_artifact(str(result.record_path))
            with tempfile.TemporaryDirectory() as scratch:
                from flows.plots import plot_block_errors

                self.mlflow.log_artifact(str(plot_block_errors(errors, name, Path(scratch) / "block_errors.png")),
                                         artifact_path="plots")
            if register:
                from flows.mlflow_registry import register_pruned_model

                register_pruned_model(str(result.output_dir), registered_model_name(job))
            return str(run.info.run_id)

    def _log_series(self, run_id: str, series: dict[str, list[tuple[int, float]]]) -> None:
        """Stepped metrics in batches (one SQLite transaction per 1000 values, MLflow's batch limit, instead of one
        per value: 450 per SmolLM2 combination took about 3 s one by one)."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp, step) for key, values in series.items()
                   for step, value in values]
        client = self.mlflow.MlflowClient()
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])

    def _log_evaluations(self, results: list[PerplexityResult]) -> None:
        for result in results:
            self.mlflow.log_metric(perplexity_key(result), result.perplexity)
            provenance = result.provenance
            if provenance is None:
                continue
            digest = provenance.sha256 or hashlib.sha256(provenance.model_dump_json().encode()).hexdigest()
            self._log_input(provenance.source, digest, "evaluation")

    def _log_accuracy(self, results: list[AccuracyResult]) -> None:
        """A vision model's top-1 (and top-5) per evaluation image set, keyed by its protocol."""
        for result in results:
            key = metric_key(result.protocol)
            self.mlflow.log_metrics({f"top1.{key}": result.top1,
                                     **({f"top5.{key}": result.top5} if result.top5 is not None else {})})

    def _log_zero_shot(self, result: ZeroShotResult | None) -> None:
        """zeroshot.<task>.<metric> per task, zeroshot.average_acc, and the lm-eval version and limit as tags."""
        if result is None:
            return
        self.mlflow.log_metrics({**zero_shot_metrics(result), "zeroshot.average_acc": result.average_accuracy})
        settings = result.settings
        self.mlflow.set_tags({"lm_eval_version": settings.lm_eval_version, "zeroshot.limit": str(settings.limit),
                              "zeroshot.source": settings.source})

    def _log_input(self, source: str, digest: str, context: str) -> None:
        """Local files as local artifact sources; named, hub and package sources by their URI."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        origin = resolve_dataset_source(source) if Path(source).exists() else CodeDatasetSource({"uri": source})
        dataset = MetaDataset(origin, name=Path(source).name or source, digest=digest[:16])  # type: ignore[abstract]
        self.mlflow.log_input(dataset, context=context, tags={"sha256": digest})


def zero_shot_metrics(result: ZeroShotResult) -> dict[str, float]:
    return {metric_key(f"zeroshot.{task}.{name}"): value for task, metrics in result.tasks.items()
            for name, value in metrics.items() if name != "documents"}


def machine_params(machine: Machine) -> dict[str, str]:
    """What ran, as params (they change results): machine.device, machine.forward_dtype, ..."""
    return {f"machine.{field}": str(value) for field, value in
            machine.model_dump(include={"device", "forward_dtype", "float32_matmul_precision"}).items()}


def machine_tags(machine: Machine) -> dict[str, str]:
    """Where it ran, as tags: the CPU model and flags, the GPU, the thread count, torch's version."""
    return {"machine.cpu_model": machine.cpu_model, "machine.cpu_flags": " ".join(machine.cpu_flags),
            "machine.gpu": machine.gpu or "none", "machine.threads": str(machine.threads),
            "machine.torch": machine.torch_version}


def registered_model_name(job: PruneJob) -> str:
    """e.g. SmolLM2-135M-Instruct.Q4_1-sparsegpt-2of4: the source's file name, the method and the pattern."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", job.model.rstrip("/").split("/")[-1].removesuffix(".gguf"))
    pattern = job.method.pattern.replace(":", "of")
    sparsity = f"-{job.method.target_sparsity:g}" if job.method.nm is None else ""
    return f"{model}-{job.method.method}-{pattern}{sparsity}"
