"""Flow `compress`: one model x one method config, as cached and resumable Prefect tasks.

  fetch_model -> build_calibration -> embed_calibration
    -> for each block, for each stage: collect_block_statistics -> solve_block
    -> reassemble -> evaluate (perplexity, and lm-eval zero-shot when configured; dense and pruned)

Every task's cache key is its source plus its parameters, which are small records carrying the
sha256 of every file they point to; the flow run id is never part of it. A second identical run
is served from the cache, and a killed run resumes at the first block stage that had not finished.
"""


import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow
from tqdm.auto import tqdm

from pruning.config import PruneJob
from pruning.corpora import source_fingerprint
from pruning.io import atomic_directory
from pruning.pipeline import check_zero_shot
from pruning.zeroshot import zero_shot_fingerprint
from tasks.artifacts import DEFAULT_STORE, ArtifactStore, references_missing_files
from tasks.blocks import block_stages, collect_block_statistics, embed_calibration, next_block_state, solve_block
from tasks.calibrate import build_calibration
from tasks.evaluate import evaluate, evaluate_zero_shot
from tasks.fetch import fetch_model
from tasks.reassemble import reassemble
from tasks.records import BlockState, CalibrationArtifact, ModelArtifact


def run_checked(stage: Any, *arguments: Any) -> Any:
    """Call a task; if its (cached) record names files that are gone, run it again with a fresh cache.

    Prefect never checks that the files behind a cached result still exist; this repairs a run whose
    artifact store was cleaned while Prefect's result cache was kept.
    """
    record = stage(*arguments)
    if references_missing_files(record):
        record = stage.with_options(refresh_cache=True)(*arguments)
    return record


def prune_blocks(model: ModelArtifact, calibration: CalibrationArtifact, job: PruneJob,
                 store: ArtifactStore) -> list[BlockState]:
    """Run every block's stages in order; each block starts from the previous block's outputs."""
    state = run_checked(embed_calibration, model, calibration, job.engine, store)
    finished = []
    label = f"{job.method.method} {job.method.pattern} {job.method.target_sparsity:g}"
    for block_index in tqdm(range(model.num_blocks), desc=label, unit="block"):
        stages = block_stages(model, job.method, job.engine, block_index)
        if stages == 0:
            state = run_checked(solve_block, model, calibration, state, 0, None, job.method, job.engine, store)
        for stage_index in range(stages):
            statistics = run_checked(collect_block_statistics, model, calibration, state, stage_index, job.method,
                                     job.engine, store)
            state = run_checked(solve_block, model, calibration, state, stage_index, statistics, job.method,
                                job.engine, store)
        finished.append(state)
        if block_index + 1 < model.num_blocks:
            state = next_block_state(state)
    return finished


def export(directory: Path, output_dir: Path) -> None:
    """Copy the pruned model from the artifact store to the job's output directory, atomically."""
    with atomic_directory(output_dir) as staging:
        shutil.copytree(directory, staging, dirs_exist_ok=True)


@flow(name="compress", log_prints=True)
def compress(job: PruneJob, store: ArtifactStore = DEFAULT_STORE) -> dict[str, Any]:
    """Prune one model with one method config, evaluate it, and export it to `job.output_dir`."""
    seconds: dict[str, float] = {}
    check_zero_shot(job.zero_shot)
    started = time.perf_counter()
    model = fetch_model(job.model, str(job.cache_dir))
    calibration = run_checked(build_calibration, model, job.calibration,
                              source_fingerprint(job.calibration.source), str(job.cache_dir), store)
    seconds["fetch_and_calibrate"] = time.perf_counter() - started

    started = time.perf_counter()
    states = prune_blocks(model, calibration, job, store)
    pruned = run_checked(reassemble, model, calibration, states, job.model_dump(mode="json"), store)
    seconds["prune"] = time.perf_counter() - started

    started = time.perf_counter()
    fingerprints = [source_fingerprint(item.dataset) for item in job.evaluation]
    results = [evaluate(pruned.path, pruned.record.sha256, item, fingerprint, str(job.cache_dir), job.engine.device)
               for item, fingerprint in zip(job.evaluation, fingerprints, strict=True)]
    dense = ([evaluate(model.path, model.digest, item, fingerprint, str(job.cache_dir), job.engine.device)
              for item, fingerprint in zip(job.evaluation, fingerprints, strict=True)]
             if job.evaluate_dense else [])
    zero_shot, dense_zero_shot = None, None
    if job.zero_shot is not None:
        data = zero_shot_fingerprint(job.zero_shot.tasks, job.zero_shot.data_dir)
        zero_shot = evaluate_zero_shot(pruned.path, pruned.record.sha256, job.zero_shot, data, job.engine.device)
        if job.evaluate_dense:
            dense_zero_shot = evaluate_zero_shot(model.path, model.digest, job.zero_shot, data, job.engine.device)
    seconds["evaluate"] = time.perf_counter() - started

    export(Path(pruned.path), job.output_dir)
    return {"method": job.method.method, "pattern": job.method.pattern, "target_sparsity": job.method.target_sparsity,
            "model": job.model, "output_dir": str(job.output_dir), "artifact": pruned.path,
            "record_sha256": pruned.record.sha256, "perplexity": results, "dense_perplexity": dense,
            "zero_shot": zero_shot, "dense_zero_shot": dense_zero_shot, "flow_seconds": seconds}
