"""A whole pruning job as plain functions: fetch -> calibrate -> prune -> reassemble -> evaluate.

Order matters for the user: every check that can fail (config, sources, context length, corpus size,
evaluation data) runs before the model's weights are loaded, and the output directory appears only
once it is complete.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pruning.architectures import adapter_for_model_type
from pruning.calibration import CalibrationSet, build_calibration_set, tokenize_corpus
from pruning.config import EvaluationConfig, PruneJob, ZeroShotConfig, check_context_length, resolve_device
from pruning.corpora import load_corpus
from pruning.engine import prune_model
from pruning.evaluate import PerplexityResult, perplexity
from pruning.methods import MethodConfig
from pruning.reassemble import decoder_linear_sparsity, save_pruned_model, software_versions
from pruning.shrink import shrink_record, structured_layout
from pruning.sources import ModelSource, load_model, load_tokenizer, resolve_model_dir, source_digest
from pruning.structured import StructuredBudget
from pruning.zeroshot import check_hub_tasks, zero_shot


def peak_rss_megabytes() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class EvaluationData:
    config: EvaluationConfig
    tokens: torch.Tensor
    provenance: dict[str, Any]


def fetch_model(model: str, cache_dir: Path) -> Path:
    """The model as a local safetensors directory (downloaded or converted once)."""
    return resolve_model_dir(ModelSource.parse(model), cache_dir)


def check_architecture(model_dir: Path, method: MethodConfig | None = None) -> None:
    """An unsupported architecture, or a structured budget the model cannot take, fails from its
    config.json before the weights are loaded."""
    adapter = adapter_for_model_type(json.loads((model_dir / "config.json").read_text()).get("model_type", "unknown"))
    if isinstance(method, StructuredBudget):
        from transformers import AutoConfig

        structured_layout(adapter, method, AutoConfig.from_pretrained(model_dir))


def check_calibration_matches(calibration: CalibrationSet, job: PruneJob) -> None:
    manifest = calibration.manifest
    for key in ("num_samples", "seqlen", "seed"):
        if manifest[key] != getattr(job.calibration, key):
            raise ValueError(f"calibration.{key}: the calibration set has {manifest[key]} but the job asks for "
                             f"{getattr(job.calibration, key)}; rebuild the calibration set")


def model_context_length(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions"):
        if key in config:
            return int(config[key])
    return None


def load_evaluation_data(evaluation: EvaluationConfig, tokenizer: Any, cache_dir: Path) -> EvaluationData:
    corpus = load_corpus(evaluation.dataset, "evaluation", cache_dir, evaluation.text_field)
    tokens = tokenize_corpus(corpus, tokenizer)
    if tokens.numel() < evaluation.seqlen:
        raise ValueError(f"evaluation.dataset: '{evaluation.dataset}' holds {tokens.numel()} tokens, "
                         f"fewer than one window of {evaluation.seqlen}")
    return EvaluationData(evaluation, tokens, corpus.provenance)


def evaluate_all(model: torch.nn.Module, data: list[EvaluationData], device: torch.device) -> list[PerplexityResult]:
    return [perplexity(model, item.tokens, item.config.seqlen, item.config.dataset, item.config.max_windows,
                       item.config.batch_size, device) for item in data]


def check_zero_shot(config: ZeroShotConfig | None) -> None:
    """Local task files are checked when the config is validated; hub tasks need the hub."""
    if config is not None and config.data_dir is None:
        check_hub_tasks(config.tasks)


def evaluate_zero_shot(model: torch.nn.Module, tokenizer: Any, config: ZeroShotConfig | None,
                       device: torch.device) -> dict[str, Any] | None:
    if config is None:
        return None
    return zero_shot(model, tokenizer, config.tasks, config.data_dir, config.limit, config.batch_size,
                     device).as_dict()


def run_prune_job(job: PruneJob, progress: bool = True, calibration: CalibrationSet | None = None) -> dict[str, Any]:
    """Run the job end to end; return the record also written to `<output_dir>/pruneflow.json`.

    `calibration`, when given (e.g. a DVC stage's output), is used instead of sampling one; it must
    match the job's calibration settings.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model_dir = fetch_model(job.model, job.cache_dir)
    check_architecture(model_dir, job.method)
    check_context_length(model_context_length(model_dir), job.calibration, job.evaluation)
    check_zero_shot(job.zero_shot)
    device = resolve_device(job.engine.device)
    timings["fetch_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    tokenizer = load_tokenizer(model_dir, job.trust_remote_code)
    if calibration is None:
        corpus = load_corpus(job.calibration.source, "calibration", job.cache_dir, job.calibration.text_field)
        calibration = build_calibration_set(corpus, tokenizer, job.calibration.num_samples, job.calibration.seqlen,
                                            job.calibration.seed)
    else:
        check_calibration_matches(calibration, job)
    evaluation_data = [load_evaluation_data(item, tokenizer, job.cache_dir) for item in job.evaluation]
    timings["calibration_seconds"] = time.perf_counter() - started

    model = load_model(model_dir, torch.float32, job.trust_remote_code)
    dense_results = evaluate_all(model, evaluation_data, device) if job.evaluate_dense else []
    dense_zero_shot = evaluate_zero_shot(model, tokenizer, job.zero_shot, device) if job.evaluate_dense else None

    started = time.perf_counter()
    report = prune_model(model, calibration.input_ids, job.method, job.engine.options(progress))
    timings["prune_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    pruned_results = evaluate_all(model, evaluation_data, device)
    pruned_zero_shot = evaluate_zero_shot(model, tokenizer, job.zero_shot, device)
    timings["evaluation_seconds"] = time.perf_counter() - started

    record = {
        "config": job.model_dump(mode="json"),
        "method": job.method.method,
        "pattern": job.method.pattern,
        "target_sparsity": job.method.target_sparsity,
        **decoder_linear_sparsity(model, report.factors),
        "perplexity": [result.as_dict() for result in pruned_results],
        "dense_perplexity": [result.as_dict() for result in dense_results],
        "zero_shot": pruned_zero_shot,
        "dense_zero_shot": dense_zero_shot,
        "engine": report.as_dict(),
        "timings": timings,
        "peak_rss_mb": peak_rss_megabytes(),
        "inputs": {"model": job.model, "model_digest": source_digest(model_dir),
                   "calibration": calibration.manifest,
                   "evaluation": [item.provenance for item in evaluation_data]},
        "versions": software_versions(),
    }
    if isinstance(job.method, StructuredBudget):
        record["structured"] = shrink_record(model)
    save_pruned_model(model, tokenizer, job.output_dir, record, report.factors)
    return record


def run_evaluation(model: str, evaluations: list[EvaluationConfig], cache_dir: Path, device: str = "auto",
                   trust_remote_code: bool = False) -> list[PerplexityResult]:
    """Perplexity of an unpruned or already pruned model."""
    return run_model_evaluation(model, evaluations, None, cache_dir, device, trust_remote_code)[0]


def run_model_evaluation(model: str, evaluations: list[EvaluationConfig], zero_shot_config: ZeroShotConfig | None,
                         cache_dir: Path, device: str = "auto", trust_remote_code: bool = False,
                         ) -> tuple[list[PerplexityResult], dict[str, Any] | None]:
    """Perplexities and (when configured) zero-shot accuracies of an unpruned or already pruned model."""
    model_dir = fetch_model(model, cache_dir)
    check_context_length(model_context_length(model_dir), None, tuple(evaluations))
    check_zero_shot(zero_shot_config)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    data = [load_evaluation_data(item, tokenizer, cache_dir) for item in evaluations]
    loaded = load_model(model_dir, torch.float32, trust_remote_code)
    resolved = resolve_device(device)
    return evaluate_all(loaded, data, resolved), evaluate_zero_shot(loaded, tokenizer, zero_shot_config, resolved)
