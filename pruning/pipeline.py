"""A whole pruning job as plain functions: fetch -> calibrate -> prune -> reassemble -> evaluate.

Order matters for the user: every check that can fail (config, sources, context length, corpus size,
evaluation data) runs before the model's weights are loaded, and the output directory appears only
once it is complete.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pruning.blocks.activations import release_free_memory
from pruning.blocks.store import BlockStore, run_key
from pruning.config import (
    EngineConfig,
    EvaluationConfig,
    PruneJob,
    ZeroShotConfig,
    check_context_length,
    resolve_device,
)
from pruning.data.calibration import CalibrationSet, build_calibration_set, tokenize_corpus
from pruning.data.corpora import load_corpus
from pruning.engine import PruneEngine
from pruning.errors import ConfigError
from pruning.evaluation.perplexity import PerplexityResult, perplexity
from pruning.evaluation.zero_shot import check_hub_tasks, zero_shot
from pruning.io import atomic_directory, code_digest
from pruning.methods.registry import MethodConfig, is_structured, needs_calibration
from pruning.methods.structured import StructuredBudget
from pruning.models.access import StreamedModel
from pruning.models.architectures import adapter_for_model_type
from pruning.models.card import CARD_FILE, model_card
from pruning.models.pruned_checkpoint import write_pruned_checkpoint
from pruning.models.shrink import structured_layout
from pruning.models.sources import ModelSource, load_model, load_tokenizer, resolve_model_dir, source_digest
from pruning.record import PruneRecord


@dataclass
class EvaluationData:
    config: EvaluationConfig
    tokens: torch.Tensor
    provenance: dict[str, Any]


def fetch_model(model: str, cache_dir: Path) -> Path:
    """The model as a local safetensors directory (downloaded or converted once)."""
    return resolve_model_dir(ModelSource.parse(model, allow_unpinned=True), cache_dir)  # checked by the caller


def check_architecture(model_dir: Path, method: MethodConfig | None = None) -> None:
    """An unsupported architecture, or a structured budget the model cannot take, fails from its
    config.json before the weights are loaded."""
    adapter = adapter_for_model_type(json.loads((model_dir / "config.json").read_text()).get("model_type", "unknown"))
    if isinstance(method, StructuredBudget):
        from transformers import AutoConfig

        structured_layout(adapter, method, AutoConfig.from_pretrained(model_dir))


def check_job(job: PruneJob, model_dir: Path) -> None:
    """Everything about a job that can be checked from config files, before any weight is read."""
    check_architecture(model_dir, job.method)
    check_context_length(model_context_length(model_dir), job.calibration, job.evaluation)
    check_zero_shot(job.zero_shot)


def check_jobs(jobs: list[PruneJob]) -> None:
    """`check_job` for every job, each model fetched once: what `compress` and `sweep` run before their flow
    starts, so that they refuse the same inputs as `prune`, with the same messages."""
    model_dirs: dict[str, Path] = {}
    for job in jobs:
        if job.model not in model_dirs:
            model_dirs[job.model] = fetch_model(job.model, job.cache_dir)
        check_job(job, model_dirs[job.model])


def check_calibration_matches(calibration: CalibrationSet, job: PruneJob) -> None:
    manifest = calibration.manifest
    for key in ("num_samples", "seqlen", "seed"):
        if manifest[key] != getattr(job.calibration, key):
            raise ConfigError(f"calibration.{key}: the calibration set has {manifest[key]} but the job asks for "
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
        raise ConfigError(f"evaluation.dataset: '{evaluation.dataset}' holds {tokens.numel()} tokens, "
                         f"fewer than one window of {evaluation.seqlen}")
    return EvaluationData(evaluation, tokens, corpus.provenance)


def evaluate_all(model: StreamedModel, data: list[EvaluationData], device: torch.device,
                 scratch: Path | None = None) -> list[PerplexityResult]:
    """Perplexity on every evaluation dataset, block by block from disk."""
    return [perplexity(model, item.tokens, item.config.seqlen, item.config.dataset, item.config.max_windows,
                       item.config.batch_size, device, scratch=scratch) for item in data]


def check_zero_shot(config: ZeroShotConfig | None) -> None:
    """Local task files are checked when the config is validated; hub tasks need the hub."""
    if config is not None and config.data_dir is None:
        check_hub_tasks(config.tasks)


def evaluate_zero_shot(model_dir: Path, config: ZeroShotConfig | None, device: torch.device,
                       trust_remote_code: bool = False) -> dict[str, Any] | None:
    """lm-eval's zero-shot tasks need the whole model in memory: it is loaded (with its tokenizer) for them alone."""
    if config is None:
        return None
    model = load_model(model_dir, torch.float32, trust_remote_code)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    return zero_shot(model, tokenizer, config.tasks, config.data_dir, config.limit, config.batch_size, device).as_dict()


def block_store(root: Path, model: str, model_digest: str, method: MethodConfig, engine: EngineConfig,
                calibration: CalibrationSet | None) -> BlockStore:
    """The block store of one model x method: keyed by everything that determines its pruned blocks."""
    fields = {"model_digest": model_digest, "method": method.model_dump(mode="json"),
              "calibration": calibration.manifest["windows_sha256"] if calibration is not None else None,
              "engine": engine.cache_fields(), "code": code_digest()}
    return BlockStore(root, run_key(**fields), {**fields, "model": model})


def job_calibration(job: PruneJob, tokenizer: Any, given: CalibrationSet | None) -> CalibrationSet | None:
    """The job's calibration set: none for a data-free method, else `given` (checked) or sampled from its source."""
    if not needs_calibration(job.method):
        return None
    if given is not None:
        check_calibration_matches(given, job)
        return given
    corpus = load_corpus(job.calibration.source, "calibration", job.cache_dir, job.calibration.text_field)
    return build_calibration_set(corpus, tokenizer, job.calibration.num_samples, job.calibration.seqlen,
                                 job.calibration.seed)


def run_prune_job(job: PruneJob, progress: bool = True, calibration: CalibrationSet | None = None) -> PruneRecord:
    """Run the job end to end; return the record also written to `<output_dir>/pruneflow.json`.

    `calibration`, when given (e.g. a DVC stage's output), is used instead of sampling one; it must
    match the job's calibration settings. The model is read block by block from disk and written block by
    block; a run killed mid-way resumes from its finished blocks (in `<cache_dir>/blocks`).
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model_dir = fetch_model(job.model, job.cache_dir)
    check_job(job, model_dir)
    device = resolve_device(job.engine.device)
    model_digest = source_digest(model_dir)
    timings["fetch_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    tokenizer = load_tokenizer(model_dir, job.trust_remote_code)
    calibration = job_calibration(job, tokenizer, calibration)
    evaluation_data = [load_evaluation_data(item, tokenizer, job.cache_dir) for item in job.evaluation]
    del tokenizer
    release_free_memory()  # the tokenizer and the texts are done with: hand their memory back before pruning
    model = StreamedModel(model_dir, job.trust_remote_code)  # reads config.json and tensor headers, no weights
    timings["calibration_seconds"] = time.perf_counter() - started

    store = block_store(job.cache_dir / "blocks", job.model, model_digest, job.method, job.engine, calibration)
    try:
        started = time.perf_counter()
        dense_results = evaluate_all(model, evaluation_data, device, store.scratch) if job.evaluate_dense else []
        dense_zero_shot = (evaluate_zero_shot(model_dir, job.zero_shot, device, job.trust_remote_code)
                           if job.evaluate_dense else None)
        timings["dense_evaluation_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        engine = PruneEngine(model, job.method, job.engine.options(progress),
                             calibration.input_ids if calibration is not None else None, store)
        report = engine.run()
        engine.close()  # its captured block arguments would otherwise sit beside the evaluation's own
        timings["prune_seconds"] = time.perf_counter() - started

        with atomic_directory(job.output_dir) as staging:
            started = time.perf_counter()
            structured = write_pruned_checkpoint(model, store, staging, is_structured(job.method.method))
            timings["write_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            pruned_results = evaluate_all(StreamedModel(staging, job.trust_remote_code), evaluation_data, device,
                                          store.scratch)
            pruned_zero_shot = evaluate_zero_shot(staging, job.zero_shot, device, job.trust_remote_code)
            timings["evaluation_seconds"] = time.perf_counter() - started
            record = PruneRecord.build(job, report, model.parameter_count(), model_digest, calibration,
                                       structured).with_results(
                [result.as_dict() for result in pruned_results], [result.as_dict() for result in dense_results],
                pruned_zero_shot, dense_zero_shot, [item.provenance for item in evaluation_data], timings)
            record.write(staging)
            (staging / CARD_FILE).write_text(model_card(record))
    finally:
        store.close()
    return record


def run_evaluation(model: str, evaluations: list[EvaluationConfig], cache_dir: Path, device: str = "auto",
                   trust_remote_code: bool = False) -> list[PerplexityResult]:
    """Perplexity of an unpruned or already pruned model."""
    return run_model_evaluation(model, evaluations, None, cache_dir, device, trust_remote_code)[0]


def run_model_evaluation(model: str, evaluations: list[EvaluationConfig], zero_shot_config: ZeroShotConfig | None,
                         cache_dir: Path, device: str = "auto", trust_remote_code: bool = False,
                         ) -> tuple[list[PerplexityResult], dict[str, Any] | None]:
    """Perplexities (block by block from disk) and, when configured, zero-shot accuracies of an unpruned or
    already pruned model."""
    model_dir = fetch_model(model, cache_dir)
    check_context_length(model_context_length(model_dir), None, tuple(evaluations))
    check_zero_shot(zero_shot_config)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    data = [load_evaluation_data(item, tokenizer, cache_dir) for item in evaluations]
    streamed = StreamedModel(model_dir, trust_remote_code)
    resolved = resolve_device(device)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="evaluation-") as scratch:
        results = evaluate_all(streamed, data, resolved, Path(scratch))
    return results, evaluate_zero_shot(model_dir, zero_shot_config, resolved, trust_remote_code)
