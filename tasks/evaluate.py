"""Stage `evaluate`: perplexity of a model directory on one evaluation dataset, with its protocol; and its
zero-shot accuracies through lm-eval. Results are kept as JSON in the artifact store."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pruning import pipeline
from pruning.config import EvaluationConfig, ZeroShotConfig, resolve_device
from pruning.models.access import StreamedModel
from pruning.models.sources import load_tokenizer
from pruning.pipeline import evaluate_all, load_evaluation_data
from tasks.artifacts import ArtifactStore, content_key


@task(cache_policy=NO_CACHE, persist_result=False)
def evaluate(model_path: str, model_digest: str, evaluation: EvaluationConfig, source_fingerprint: str,
             cache_dir: str, device: str, store: ArtifactStore) -> dict[str, Any]:
    """`model_digest` and `source_fingerprint` put the model's and the text's content in the key."""

    def compute() -> dict[str, Any]:
        directory = Path(model_path)
        data = load_evaluation_data(evaluation, load_tokenizer(directory), Path(cache_dir))
        with tempfile.TemporaryDirectory(dir=store.root, prefix="evaluation-") as scratch:
            result = evaluate_all(StreamedModel(directory), [data], resolve_device(device), Path(scratch))[0]
        return replace(result, provenance=data.provenance).as_dict()

    store.root.mkdir(parents=True, exist_ok=True)
    return store.cached_json("evaluations", content_key(model_digest, evaluation, source_fingerprint, device),
                             compute)  # type: ignore[no-any-return]


@task(cache_policy=NO_CACHE, persist_result=False)
def evaluate_zero_shot(model_path: str, model_digest: str, config: ZeroShotConfig, data_fingerprint: str,
                       device: str, store: ArtifactStore) -> dict[str, Any]:
    """`data_fingerprint` (pruning.evaluation.zero_shot.zero_shot_fingerprint) puts the task files and lm-eval's version
    in the key."""

    def compute() -> dict[str, Any]:
        directory = Path(model_path)
        result = pipeline.evaluate_zero_shot(directory, config, resolve_device(device))
        assert result is not None
        return result

    return store.cached_json("zero-shot", content_key(model_digest, config, data_fingerprint, device),
                             compute)  # type: ignore[no-any-return]
