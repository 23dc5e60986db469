"""Stages `collect_block_statistics` and `solve_block`, run once per block and stage.

A block is pruned in stages (one group of linears per stage when true-sequential). For stage s,
`collect_block_statistics` runs the block with stages < s already solved and stores Σxxᵀ of the
stage's inputs; `solve_block` solves the stage's linears from those statistics and stores them.
The last stage's `solve_block` also runs the finished block and stores its outputs: the next
block's inputs. Every file is keyed by the hash of what determines it, so a run that was killed
resumes at the first block and stage whose result is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from prefect import task
from torch import nn

from pruning.block_files import (
    load_activations,
    load_linears,
    load_statistics,
    save_activations,
    save_linears,
    save_statistics,
    statistics_forward_seconds,
)
from pruning.config import EngineConfig
from pruning.engine import BlockPruner, PruneReport
from pruning.io import write_json
from pruning.methods import MethodConfig
from pruning.shrink import structured_layout
from tasks.artifacts import ArtifactStore, FileRef, content_key, task_cache_key
from tasks.records import BlockState, CalibrationArtifact, ModelArtifact
from tasks.runtime import block_calls, dense_block, dense_model, embedded_calibration


@task(cache_key_fn=task_cache_key, persist_result=True)
def embed_calibration(model: ModelArtifact, calibration: CalibrationArtifact, engine: EngineConfig,
                      store: ArtifactStore) -> BlockState:
    """Block 0's inputs: the calibration windows after the embeddings."""
    path = store.directory("activations", content_key(model.digest, calibration.tokens, engine)) / "inputs.safetensors"
    if not path.is_file():
        options = engine.options(progress=False)
        save_activations([batch.to(options.forward_dtype) for batch in
                          embedded_calibration(model, calibration, engine.batch_size)], path)
    return BlockState(block_index=0, inputs=FileRef.of(path))


def _pruner(model: ModelArtifact, method: MethodConfig, engine: EngineConfig) -> BlockPruner:
    dense, adapter = dense_model(model)
    layout = structured_layout(adapter, method, cast(Any, dense).config)
    return BlockPruner(adapter, method, engine.options(progress=False), PruneReport(), layout)


def _working_block(model: ModelArtifact, state: BlockState, pruner: BlockPruner) -> nn.Module:
    """A copy of the dense block with the linears of every stage solved so far written in."""
    block = dense_block(model, state.block_index)
    for linears in state.linears:
        load_linears(block, pruner.adapter, Path(linears.path))
    return block


def block_stages(model: ModelArtifact, method: MethodConfig, engine: EngineConfig, block_index: int) -> int:
    """How many stages block `block_index` has (skipped layers can leave a block with fewer, or none)."""
    pruner = _pruner(model, method, engine)
    return len(pruner.stages(f"{pruner.adapter.blocks_path}.{block_index}"))


@task(cache_key_fn=task_cache_key, persist_result=True,
      task_run_name="collect_block_statistics-{state.block_index}-{stage_index}")
def collect_block_statistics(model: ModelArtifact, calibration: CalibrationArtifact, state: BlockState,
                             stage_index: int, method: MethodConfig, engine: EngineConfig,
                             store: ArtifactStore) -> FileRef:
    """Σxxᵀ (fp32) of the inputs of stage `stage_index`'s linears, with earlier stages already solved."""
    path = store.directory("statistics", content_key(model.digest, state, stage_index, method, engine))
    path = path / "statistics.safetensors"
    if not path.is_file():
        pruner = _pruner(model, method, engine)
        prefix = f"{pruner.adapter.blocks_path}.{state.block_index}"
        working, calls = pruner.prepare(_working_block(model, state, pruner),
                                        block_calls(model, calibration, engine.batch_size, state.block_index))
        stage = pruner.stages(prefix)[stage_index]
        statistics = pruner.collect_statistics(working, stage, load_activations(Path(state.inputs.path)), calls)
        save_statistics(statistics, path, pruner.report.forward_seconds)
    return FileRef.of(path)


@task(cache_key_fn=task_cache_key, persist_result=True, task_run_name="solve_block-{state.block_index}-{stage_index}")
def solve_block(model: ModelArtifact, calibration: CalibrationArtifact, state: BlockState, stage_index: int,
                statistics: FileRef | None, method: MethodConfig, engine: EngineConfig,
                store: ArtifactStore) -> BlockState:
    """Solve stage `stage_index`'s linears; after the last stage, also store the block's outputs.

    A block whose linears are all skipped has no stages: it is called once with no statistics and
    only produces its outputs.
    """
    directory = store.directory("blocks", content_key(model.digest, state, stage_index, statistics, method, engine))
    linears_path, report_path, outputs_path = (directory / "linears.safetensors", directory / "layers.json",
                                               directory / "outputs.safetensors")
    pruner = _pruner(model, method, engine)
    prefix = f"{pruner.adapter.blocks_path}.{state.block_index}"
    stages = pruner.stages(prefix)
    last = stage_index >= len(stages) - 1
    if not (report_path.is_file() and (outputs_path.is_file() or not last)):
        block = _working_block(model, state, pruner)
        working, calls = pruner.prepare(block, block_calls(model, calibration, engine.batch_size, state.block_index))
        solved: list[str] = []
        if statistics is not None:
            pruner.report.forward_seconds += statistics_forward_seconds(Path(statistics.path))
            stage = stages[stage_index]
            solved = pruner.solve_stage(block, working, prefix, stage, load_statistics(Path(statistics.path), stage))
        factors = {name.removeprefix(f"{prefix}."): term for name, term in pruner.report.factors.items()}
        save_linears(block, pruner.adapter, solved, linears_path, factors)
        if last:
            save_activations(pruner.propagate(working, load_activations(Path(state.inputs.path)), calls),
                             outputs_path)
        write_json(report_path, pruner.report.as_dict())
    return state.model_copy(update={
        "linears": (*state.linears, FileRef.of(linears_path)),
        "reports": (*state.reports, FileRef.of(report_path)),
        "outputs": FileRef.of(outputs_path) if last else None,
    })


def next_block_state(state: BlockState) -> BlockState:
    """The following block starts from this block's outputs."""
    if state.outputs is None:
        raise ValueError(f"block {state.block_index} has no outputs yet")
    return BlockState(block_index=state.block_index + 1, inputs=state.outputs)


def layer_reports(states: list[BlockState]) -> list[dict]:  # type: ignore[type-arg]
    reports = []
    for state in states:
        for report in state.reports:
            reports.append(json.loads(Path(report.path).read_text()))
    return reports
