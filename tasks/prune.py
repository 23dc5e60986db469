"""Stages `prune_block` (once per block) and `assemble`: the pruning engine driven block by block by Prefect.

The engine object of a process is built once per `EngineRun` record; each `prune_block` task asks it to
finish one block, which it reuses from its block store when that block is already there (a second run, or
a run resuming after a kill) and otherwise computes from the previous block's outputs. `assemble` writes
the pruned checkpoint and its record into the artifact store.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pruning.config import PruneJob
from pruning.data.calibration import CalibrationSet, load_calibration_set
from pruning.engine import PruneEngine
from pruning.io import atomic_directory
from pruning.methods.registry import is_structured, needs_calibration
from pruning.models.access import StreamedModel
from pruning.models.pruned_checkpoint import write_pruned_checkpoint
from pruning.pipeline import block_store
from pruning.record import RECORD_FILE, PruneRecord
from tasks.artifacts import ArtifactStore, FileRef, content_key
from tasks.records import BlockOutcome, EngineRun, PrunedModel

_current: tuple[EngineRun, PruneEngine, StreamedModel, CalibrationSet | None] | None = None


def engine_for(run: EngineRun) -> tuple[PruneEngine, StreamedModel, CalibrationSet | None]:
    """The engine of `run` in this process, built on first use (the previous run's engine is closed)."""
    global _current
    if _current is None or _current[0] != run:
        if _current is not None:
            _current[1].close()
        model = StreamedModel(Path(run.model.path), run.trust_remote_code)
        calibration = (load_calibration_set(Path(run.calibration.tokens.path).parent)
                       if run.calibration is not None and needs_calibration(run.method) else None)
        store = block_store(Path(run.blocks_root), run.model.spec, run.model.digest, run.method, run.engine,
                            calibration)
        engine = PruneEngine(model, run.method, run.engine.options(progress=False),
                             calibration.input_ids if calibration is not None else None, store)
        _current = (run, engine, model, calibration)
    return _current[1], _current[2], _current[3]


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="prune_block-{block_index}")
def prune_block(run: EngineRun, block_index: int) -> BlockOutcome:
    engine, _, _ = engine_for(run)
    reused = engine.store is not None and engine.store.is_complete(block_index)
    engine.prune_block(block_index)
    return BlockOutcome(index=block_index, reused=reused)


@task(cache_policy=NO_CACHE, persist_result=False)
def assemble(run: EngineRun, job: PruneJob, store: ArtifactStore) -> PrunedModel:
    """The pruned model (weights, config, tokenizer, record) from the finished blocks, in the artifact store."""
    engine, model, calibration = engine_for(run)
    directory = store.directory("models", content_key(run, job.model_dump(mode="json")))
    if not (directory / RECORD_FILE).is_file():
        with atomic_directory(directory) as staging:
            structured = write_pruned_checkpoint(model, engine.store, staging,  # type: ignore[arg-type]
                                                 is_structured(run.method.method))
            PruneRecord.build(job, engine.report, model.parameter_count(), run.model.digest, calibration,
                              structured).write(staging)
    return PrunedModel(path=str(directory), record=FileRef.of(directory / RECORD_FILE))
