"""Stage `reassemble`: the dense model with every solved block written in, saved as a plain HF directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from pruning.architectures import adapter_for
from pruning.block_files import load_linears
from pruning.methods import is_structured, method_config
from pruning.reassemble import RECORD_FILE, decoder_linear_sparsity, save_pruned_model, software_versions
from pruning.shrink import shrink_record
from pruning.sources import load_model, load_tokenizer
from tasks.artifacts import ArtifactStore, FileRef, content_key, task_cache_key
from tasks.blocks import layer_reports
from tasks.records import BlockState, CalibrationArtifact, ModelArtifact, PrunedModel


@task(cache_key_fn=task_cache_key, persist_result=True)
def reassemble(model: ModelArtifact, calibration: CalibrationArtifact, states: list[BlockState],
               job_config: dict[str, Any], store: ArtifactStore) -> PrunedModel:
    """Load the dense model once, write every block's solved linears into it, save it with its record."""
    directory = store.directory("models", content_key(model.digest, calibration.tokens, states, job_config))
    if not (directory / RECORD_FILE).is_file():
        pruned = load_model(Path(model.path))
        adapter = adapter_for(pruned)
        blocks = adapter.blocks(pruned)
        factors = {}
        for state in states:
            prefix = f"{adapter.blocks_path}.{state.block_index}"
            for linears in state.linears:
                for name, term in load_linears(blocks[state.block_index], adapter, Path(linears.path)).items():
                    factors[f"{prefix}.{name}"] = term
        reports = layer_reports(states)
        record = {
            "config": job_config,
            "method": job_config["method"]["method"],
            "pattern": job_config["method"].get("pattern", "unstructured"),
            "target_sparsity": method_config(job_config["method"]).target_sparsity,
            **decoder_linear_sparsity(pruned, factors),
            "engine": {
                "forward_seconds": sum(report["forward_seconds"] for report in reports),
                "solve_seconds": sum(report["solve_seconds"] for report in reports),
                "layers": [layer for report in reports for layer in report["layers"]],
            },
            "inputs": {"model": model.spec, "model_digest": model.digest,
                       "calibration": json.loads(Path(calibration.manifest.path).read_text()),
                       "calibration_sha256": calibration.tokens.sha256},
            "versions": software_versions(),
        }
        if is_structured(record["method"]):
            record["structured"] = shrink_record(pruned)
        save_pruned_model(pruned, load_tokenizer(Path(model.path)), directory, record, factors)
    return PrunedModel(path=str(directory), record=FileRef.of(directory / RECORD_FILE))
