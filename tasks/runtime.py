"""Per-process memo of what every block task of a flow needs: the dense model and its block call arguments.

Tasks still take and return records of files; this only avoids reloading the same model from disk
for each of the hundreds of block tasks a flow runs in one process.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn

from pruning.architectures import ArchitectureAdapter, adapter_for
from pruning.calibration import load_calibration_set
from pruning.engine import BlockCall, capture_block_inputs
from pruning.sources import load_model
from tasks.records import CalibrationArtifact, ModelArtifact


@functools.lru_cache(maxsize=2)
def _dense_model(path: str, digest: str) -> nn.Module:
    return load_model(Path(path), torch.float32)


def dense_model(model: ModelArtifact) -> tuple[nn.Module, ArchitectureAdapter]:
    loaded = _dense_model(model.path, model.digest)
    return loaded, adapter_for(loaded)


def dense_block(model: ModelArtifact, block_index: int) -> nn.Module:
    """A fresh copy of block `block_index` with its dense weights."""
    loaded, adapter = dense_model(model)
    return copy.deepcopy(adapter.blocks(loaded)[block_index])


@functools.lru_cache(maxsize=2)
def _captured(path: str, digest: str, tokens_sha256: str, tokens_path: str,
              batch_size: int) -> tuple[list[torch.Tensor], list[list[BlockCall]]]:
    loaded = _dense_model(path, digest)
    calibration = load_calibration_set(Path(tokens_path).parent)
    return capture_block_inputs(loaded, adapter_for(loaded), calibration.input_ids, batch_size)


def block_calls(model: ModelArtifact, calibration: CalibrationArtifact, batch_size: int,
                block_index: int) -> list[BlockCall]:
    """How the model calls block `block_index` on each calibration batch."""
    return _captured(model.path, model.digest, calibration.tokens.sha256, calibration.tokens.path,
                     batch_size)[1][block_index]


def embedded_calibration(model: ModelArtifact, calibration: CalibrationArtifact,
                         batch_size: int) -> list[torch.Tensor]:
    """Block 0's inputs: the calibration batches after the embeddings."""
    return _captured(model.path, model.digest, calibration.tokens.sha256, calibration.tokens.path, batch_size)[0]
