"""Stage `evaluate`: perplexity of a model directory on one evaluation dataset, with its protocol; and its
zero-shot accuracies through lm-eval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from pruning import pipeline
from pruning.config import EvaluationConfig, ZeroShotConfig, resolve_device
from pruning.pipeline import evaluate_all, load_evaluation_data
from pruning.sources import load_model, load_tokenizer
from tasks.artifacts import task_cache_key


@task(cache_key_fn=task_cache_key, persist_result=True)
def evaluate(model_path: str, model_digest: str, evaluation: EvaluationConfig, source_fingerprint: str,
             cache_dir: str, device: str) -> dict[str, Any]:
    """`model_digest` and `source_fingerprint` put the model's and the text's content in the cache key."""
    directory = Path(model_path)
    data = load_evaluation_data(evaluation, load_tokenizer(directory), Path(cache_dir))
    result = evaluate_all(load_model(directory), [data], resolve_device(device))[0]
    return {**result.as_dict(), "provenance": data.provenance}


@task(cache_key_fn=task_cache_key, persist_result=True)
def evaluate_zero_shot(model_path: str, model_digest: str, config: ZeroShotConfig, data_fingerprint: str,
                       device: str) -> dict[str, Any]:
    """`data_fingerprint` (pruning.zeroshot.zero_shot_fingerprint) puts the task files and lm-eval's version
    in the cache key."""
    directory = Path(model_path)
    model, tokenizer = load_model(directory), load_tokenizer(directory)
    result = pipeline.evaluate_zero_shot(model, tokenizer, config, resolve_device(device))
    assert result is not None
    return result
