"""Stage `bench`: speed and memory of a dense model and its pruned forms on each configured device (JSON)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pruning.evaluation.speed import SpeedSettings, benchmark_models
from pruning.io import write_json
from pruning.pipeline import fetch_model


@task(cache_policy=NO_CACHE, persist_result=False)
def benchmark(model: str, pruned_dirs: list[str], settings: SpeedSettings, devices: tuple[str, ...], cache_dir: str,
              output: str) -> str:
    """Timings are measurements of this machine now, so never served from a cache."""
    directories = [fetch_model(model, Path(cache_dir)), *(Path(directory) for directory in pruned_dirs)]
    write_json(Path(output), benchmark_models(directories, settings, devices))
    return output
