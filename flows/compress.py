"""Flow `compress`: one model x one method config, as resumable Prefect tasks around the pruning engine.

  fetch_model -> build_calibration (skipped by data-free methods)
    -> prune_block for every block (the engine; finished blocks come from its block store)
    -> assemble -> evaluate (perplexity, and lm-eval zero-shot when configured; dense and pruned) -> export

The artifact store is the only cache: every artifact sits under a key of what determines it (the `pruning`
source digest included), so a second identical run computes nothing and a killed run resumes at the first
unfinished block. The same engine runs `pruneflow prune`.
"""


import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.console import CombinationRow, combination_row
from flows.interrupts import cancel_stopped_flow_run
from pruning.config import PruneJob
from pruning.data.corpora import source_fingerprint
from pruning.evaluation.zero_shot import zero_shot_fingerprint
from pruning.io import atomic_directory, link_or_copy
from pruning.methods.registry import needs_calibration
from pruning.models.card import CARD_FILE, model_card
from pruning.pipeline import check_job
from pruning.record import RECORD_FILE, PruneRecord
from tasks.artifacts import DEFAULT_STORE, ArtifactStore, content_key
from tasks.calibrate import build_calibration
from tasks.evaluate import evaluate, evaluate_zero_shot
from tasks.fetch import fetch_model
from tasks.prune import assemble, prune_block
from tasks.records import BlockOutcome, EngineRun


def export(directory: Path, output_dir: Path, results: dict[str, Any], store: ArtifactStore) -> None:
    """Put the pruned model from the artifact store at the job's output directory, atomically (files are
    hard-linked where the file system allows, else copied), its record and model card completed with `results`
    (the evaluation's fields of the run record, see `PruneRecord.with_results`). The completed record is an
    artifact of its own, keyed by its content, so a second identical run links the same file again."""

    record = PruneRecord.read(directory).with_results(**results)
    completed = store.directory("records", content_key(record))
    if not (completed / RECORD_FILE).is_file():
        record.write(completed)
    with atomic_directory(output_dir) as staging:
        shutil.copytree(directory, staging, dirs_exist_ok=True, copy_function=link_or_copy)
        (staging / RECORD_FILE).unlink()  # the bare record of the pruned weights, replaced by the completed one
        link_or_copy(completed / RECORD_FILE, staging / RECORD_FILE)
        (staging / CARD_FILE).write_text(model_card(record))


@flow(name="compress", log_prints=True, on_crashed=[cancel_stopped_flow_run])
def compress(job: PruneJob, store: ArtifactStore = DEFAULT_STORE) -> dict[str, Any]:
    """Prune one model with one method config, evaluate it, and export it to `job.output_dir`."""
    with combination_row(str(job.output_dir), Path(job.model).name, combination_label(job)) as row:
        summary = _compress(job, store, row)
        row.done(f"ppl {summary['perplexity'][0]['perplexity']:.2f}" if summary["perplexity"] else "")
    return summary


def combination_label(job: PruneJob) -> str:
    return f"{job.method.method} {job.method.pattern} {job.method.target_sparsity:g}"


def _compress(job: PruneJob, store: ArtifactStore, row: CombinationRow) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    row.stage("fetch")
    model = fetch_model(job.model, str(job.cache_dir))
    check_job(job, Path(model.path))
    row.stage("calibrate")
    calibration = (build_calibration(model, job.calibration, source_fingerprint(job.calibration.source),
                                     str(job.cache_dir), store) if needs_calibration(job.method) else None)
    seconds["fetch_and_calibrate"] = time.perf_counter() - started

    started = time.perf_counter()
    run = EngineRun(model=model, calibration=calibration, method=job.method, engine=job.engine,
                    blocks_root=str(store.blocks), trust_remote_code=job.trust_remote_code)
    row.blocks(model.num_blocks)
    blocks: list[BlockOutcome] = []
    for index in range(model.num_blocks):
        blocks.append(prune_block(run, index))
        row.advance()
    row.stage("assemble")
    pruned = assemble(run, job, store)
    seconds["prune"] = time.perf_counter() - started

    started = time.perf_counter()
    row.stage("perplexity")
    fingerprints = [source_fingerprint(item.dataset) for item in job.evaluation]
    device = job.engine.device
    results = [evaluate(pruned.path, pruned.record.sha256, item, fingerprint, str(job.cache_dir), device, store)
               for item, fingerprint in zip(job.evaluation, fingerprints, strict=True)]
    dense = ([evaluate(model.path, model.digest, item, fingerprint, str(job.cache_dir), device, store)
              for item, fingerprint in zip(job.evaluation, fingerprints, strict=True)]
             if job.evaluate_dense else [])
    zero_shot, dense_zero_shot = None, None
    if job.zero_shot is not None:
        row.stage("zero-shot")
        data = zero_shot_fingerprint(job.zero_shot.tasks, job.zero_shot.data_dir)
        zero_shot = evaluate_zero_shot(pruned.path, pruned.record.sha256, job.zero_shot, data, device, store)
        if job.evaluate_dense:
            dense_zero_shot = evaluate_zero_shot(model.path, model.digest, job.zero_shot, data, device, store)
    seconds["evaluate"] = time.perf_counter() - started

    row.stage("export")
    export(Path(pruned.path), job.output_dir, {"perplexity": results, "dense_perplexity": dense,
                                               "zero_shot": zero_shot, "dense_zero_shot": dense_zero_shot}, store)
    return {"method": job.method.method, "pattern": job.method.pattern, "target_sparsity": job.method.target_sparsity,
            "model": job.model, "output_dir": str(job.output_dir), "artifact": pruned.path,
            "record_sha256": pruned.record.sha256, "perplexity": results, "dense_perplexity": dense,
            "zero_shot": zero_shot, "dense_zero_shot": dense_zero_shot, "flow_seconds": seconds,
            "blocks_reused": sum(block.reused for block in blocks),
            "blocks_computed": sum(not block.reused for block in blocks)}
