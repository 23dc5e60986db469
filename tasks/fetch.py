"""Stage `fetch_model`: the model as a local safetensors directory and its content digest."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pruning.models.sources import source_digest
from pruning.pipeline import fetch_model as resolve_model
from tasks.records import ModelArtifact


@task(cache_policy=NO_CACHE, persist_result=False)
def fetch_model(model: str, cache_dir: str) -> ModelArtifact:
    """Always runs: conversion is cached on disk by sha256, and the digest check costs well under a second."""
    directory = resolve_model(model, Path(cache_dir))
    config = json.loads((directory / "config.json").read_text())
    blocks = config.get("num_hidden_layers", config.get("n_layer"))
    return ModelArtifact(spec=model, path=str(directory), digest=source_digest(directory), num_blocks=int(blocks))
