"""Safetensors checkpoints read and written one tensor group at a time, never as a whole model.

A checkpoint directory holds either one `model.safetensors` or shards listed in
`model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {tensor: shard}}`), as Hugging Face
writes them. `CheckpointReader` opens each file lazily and copies out only the tensors asked for;
`ShardedWriter` writes one shard per call and the index at the end, so a model of any size is written
with one block in memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pruning.errors import ConfigError
from pruning.io import atomic_path, write_json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointReader:
    """The tensors of a safetensors checkpoint directory, by name, read on demand.

    safetensors maps a file into memory and hands out tensors backed by that mapping (copy-on-write), so a
    file is opened only for the reads at hand and closed again: the pages of a block stay resident only as
    long as the block's tensors are alive, not as long as the reader."""

    def __init__(self, directory: Path, single_file: str = SINGLE_FILE, index_file: str = INDEX_FILE) -> None:
        self.directory = Path(directory)
        index = self.directory / index_file
        self.metadata: dict[str, Any] = {}
        if index.is_file():
            payload = json.loads(index.read_text())
            paths = sorted({self.directory / shard for shard in payload["weight_map"].values()})
            self.metadata = payload.get("metadata") or {}
        else:
            paths = [self.directory / single_file] if (self.directory / single_file).is_file() else sorted(
                self.directory.glob("*.safetensors"))
            if not paths:
                raise ConfigError(f"'{self.directory}' holds no *.safetensors weights")
        self.files: dict[str, Path] = {}
        self._headers: dict[str, tuple[list[int], str]] = {}
        for path in paths:
            with safe_open(str(path), framework="pt") as handle:
                if not index.is_file():
                    self.metadata.update(handle.metadata() or {})
                for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    tensor_slice = handle.get_slice(name)
                    self.files[name] = path
                    self._headers[name] = (list(tensor_slice.get_shape()), str(tensor_slice.get_dtype()))

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str) -> torch.Tensor:
        """One tensor, on the CPU, in its stored dtype."""
        return self.read_many([name])[name]

    def read_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Several tensors, each file opened once."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        tensors = {}
        for path, file_names in by_file.items():
            with safe_open(str(path), framework="pt") as handle:
                tensors.update({name: handle.get_tensor(name) for name in file_names})
        return tensors

    def shape(self, name: str) -> list[int]:
        return self._headers[name][0]

    def storage_dtype(self) -> torch.dtype:
        """The floating dtype most of the checkpoint's elements are stored in (weights keep it on disk)."""
        elements: dict[str, int] = {}
        for shape, dtype in self._headers.values():
            elements[dtype] = elements.get(dtype, 0) + math.prod(shape)
        floating = {dtype: count for dtype, count in elements.items() if dtype in FLOATING_DTYPES}
        return FLOATING_DTYPES[max(floating, key=floating.__getitem__)] if floating else torch.float32


FLOATING_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class ShardedWriter:
    """Writes shards `<prefix>-NNNNN-of-MMMMM.safetensors` into a directory and the index that lists them."""

    def __init__(self, directory: Path, num_shards: int, prefix: str = "model", index_file: str = INDEX_FILE,
                 metadata: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.num_shards = num_shards
        self.prefix = prefix
        self.index_file = index_file
        self.metadata = dict(metadata or {})
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def shard_name(self, number: int) -> str:
        return f"{self.prefix}-{number + 1:05d}-of-{self.num_shards:05d}.safetensors"

    def write(self, number: int, tensors: dict[str, torch.Tensor]) -> Path:
        """Write shard `number` (0-based) from tensors in memory."""
        path = self.directory / self.shard_name(number)
        with atomic_path(path) as staging:
            save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(staging),
                      metadata={"format": "pt"})
        self.add(number, {name: tensor.numel() * tensor.element_size() for name, tensor in tensors.items()})
        return path

    def add(self, number: int, sizes: dict[str, int]) -> None:
        """Record the tensors (name -> bytes) of shard `number`, written or linked into place by the caller."""
        for name, size in sizes.items():
            self.weight_map[name] = self.shard_name(number)
            self.total_size += size

    def finish(self) -> None:
        write_json(self.directory / self.index_file,
                   {"metadata": {"total_size": self.total_size, **self.metadata}, "weight_map": self.weight_map})


def tensor_sizes(path: Path) -> dict[str, int]:
    """Bytes of each tensor of a safetensors file, from its header."""
    with safe_open(str(path), framework="pt") as handle:
        return {name: math.prod(handle.get_slice(name).get_shape()) * _ELEMENT_BYTES[handle.get_slice(name).get_dtype()]
                for name in handle.keys()}  # noqa: SIM118


_ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                  "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
