"""Finished blocks of a pruning run on disk: what a second run reuses and a killed run resumes from.

A run's directory is `<artifact store>/blocks/<key>/`, the key (`pruning.store.ArtifactStore.key`) a hash of
everything that determines the result (model digest, calibration tokens, method config, the engine settings and
machine fields that change results, the digest of the `pruning` source). Per block:
  block-NNNNN/weights.safetensors   the pruned block's tensors under their full names, in the stored dtype
  block-NNNNN/factors.safetensors   sparse + low-rank terms "<linear>:sparse|up|down" (methods that make them)
  block-NNNNN/outputs/              the block's outputs on the calibration set (the next block's inputs),
                                    kept until the next block is finished
  block-NNNNN/dense_outputs/        the original block's outputs on the dense model's inputs (runs with a dense
                                    stream: dense targets, block reconstruction), kept as long as outputs/
  block-NNNNN/block.json            its record (`BlockRecord`), written last: a block is finished once it exists
Every file is written to a temporary name and renamed, so a killed run leaves no half-written block.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn

from pruning.blocks.activations import ActivationSet
from pruning.blocks.report import BlockRecord
from pruning.io import atomic_path, process_is_alive, write_json
from pruning.methods.base import SparseLowRank

BLOCK_RECORD_FILE = "block.json"
RUN_DESCRIPTION_FILE = "run.json"
BLOCK_SPARSITY_FILE = "block_sparsity.json"
WEIGHTS_FILE = "weights.safetensors"
FACTORS_FILE = "factors.safetensors"
OUTPUTS_DIRECTORY = "outputs"
DENSE_OUTPUTS_DIRECTORY = "dense_outputs"


class BlockStore:
    """The finished blocks of one run (see the module docstring)."""

    def __init__(self, directory: Path, description: BaseModel | None = None) -> None:
        """The store in `directory` (created); `description`, what its key was made of, is written once beside the
        blocks for a person who wonders what a folder holds."""
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        if description is not None and not (self.directory / RUN_DESCRIPTION_FILE).is_file():
            write_json(self.directory / RUN_DESCRIPTION_FILE, description.model_dump(mode="json"))
        self._remove_stale_scratch()

    def _remove_stale_scratch(self) -> None:
        """Scratch folders of processes that no longer run (killed ones) are removed."""
        for folder in self.directory.glob("scratch-*"):
            if not process_is_alive(int(folder.name.split("-")[1])):
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Remove this process's scratch folders (see `scratch_folder`)."""
        for folder in self.directory.glob(f"scratch-{os.getpid()}-*"):
            shutil.rmtree(folder, ignore_errors=True)

    def scratch_folder(self) -> Path:
        """A new folder for activations that fit no memory budget and have no block folder of their own, removed
        by `close` (or, when this process was killed, by the next store opened on this folder)."""
        return Path(tempfile.mkdtemp(prefix=f"scratch-{os.getpid()}-", dir=self.directory))

    def block_directory(self, index: int) -> Path:
        return self.directory / f"block-{index:05d}"

    def is_complete(self, index: int) -> bool:
        return (self.block_directory(index) / BLOCK_RECORD_FILE).is_file()

    def record(self, index: int) -> BlockRecord:
        return BlockRecord.model_validate_json((self.block_directory(index) / BLOCK_RECORD_FILE).read_text())

    def weights_path(self, index: int) -> Path:
        return self.block_directory(index) / WEIGHTS_FILE

    def factors_path(self, index: int) -> Path:
        return self.block_directory(index) / FACTORS_FILE

    def stream_directory(self, index: int, stream: Literal["pruned", "dense"]) -> Path:
        """Where block `index`'s outputs of a stream are kept: the pruned model's or the dense model's."""
        return self.block_directory(index) / (OUTPUTS_DIRECTORY if stream == "pruned" else DENSE_OUTPUTS_DIRECTORY)

    @property
    def block_sparsity_path(self) -> Path:
        """Each block's sparsity under a layer budget, computed once for the run (OWL needs a dense pass)."""
        return self.directory / BLOCK_SPARSITY_FILE

    def save(self, record: BlockRecord, weights: dict[str, torch.Tensor], factors: dict[str, SparseLowRank],
             outputs: ActivationSet | None) -> None:
        """Write a finished block; `outputs` must already be in `outputs_directory` (the engine writes them there)."""
        directory = self.block_directory(record.index)
        directory.mkdir(parents=True, exist_ok=True)
        # Read-only: assembled models hard-link these files, so a write through a model's copy must not reach the store.
        with atomic_path(directory / WEIGHTS_FILE, read_only=True) as staging:
            save_file({name: tensor.contiguous().cpu() for name, tensor in weights.items()}, str(staging))
        if factors:
            tensors = {}
            for name, term in factors.items():
                tensors.update({f"{name}:sparse": term.sparse, f"{name}:up": term.up, f"{name}:down": term.down})
            with atomic_path(directory / FACTORS_FILE, read_only=True) as staging:
                save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(staging))
        if outputs is not None and outputs.directory != self.stream_directory(record.index, "pruned"):
            raise ValueError("a block's outputs must be written to its store directory")
        write_json(directory / BLOCK_RECORD_FILE, record.model_dump(mode="json"))

    def load_weights(self, index: int, block: nn.Module, prefix: str) -> None:
        """Write the stored pruned weights of block `index` into `block` (full names under `prefix`)."""
        tensors = load_file(str(self.weights_path(index)))
        block.load_state_dict({name.removeprefix(f"{prefix}."): tensor for name, tensor in tensors.items()})

    def factors(self, index: int) -> dict[str, SparseLowRank]:
        """The block's sparse + low-rank terms by linear name inside the block (empty for other methods)."""
        if not self.factors_path(index).is_file():
            return {}
        tensors = load_file(str(self.factors_path(index)))
        names = {key.rsplit(":", 1)[0] for key in tensors}
        return {name: SparseLowRank(tensors[f"{name}:sparse"], tensors[f"{name}:up"], tensors[f"{name}:down"])
                for name in sorted(names)}
