"""Files that let one block be pruned in a process of its own: activations, statistics, solved linears.

All are safetensors, written atomically:
  activations   one tensor per calibration batch, "batch_0000", "batch_0001", ...
  statistics    one gram matrix per linear group, keyed by the group's first linear; counts in metadata
  linears       the (d_out, d_in) weights of solved linears, keyed by their name inside the block,
                and for sparse + low-rank results their terms "<name>:sparse", "<name>:up", "<name>:down"
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pruning.architectures import ArchitectureAdapter
from pruning.io import atomic_path
from pruning.statistics import InputStatistics, SparseLowRank


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as staging:
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(staging), metadata=metadata)


def save_activations(batches: list[torch.Tensor], path: Path) -> None:
    _save({f"batch_{index:04d}": batch for index, batch in enumerate(batches)}, path)


def load_activations(path: Path) -> list[torch.Tensor]:
    tensors = load_file(str(path))
    return [tensors[key] for key in sorted(tensors)]


def save_statistics(statistics: dict[tuple[str, ...], InputStatistics], path: Path,
                    forward_seconds: float = 0.0) -> None:
    """`forward_seconds`, the time of the pass that collected them, is kept so reports can add it up."""
    tensors, counts = {}, {}
    for group, group_statistics in statistics.items():
        gram, group_counts = group_statistics.state()
        tensors[group[0]] = gram
        counts[group[0]] = group_counts
    _save(tensors, path, {"counts": json.dumps(counts), "forward_seconds": repr(forward_seconds)})


def load_statistics(path: Path, stage: list[tuple[str, ...]]) -> dict[tuple[str, ...], InputStatistics]:
    with safe_open(str(path), framework="pt") as handle:
        counts = json.loads(handle.metadata()["counts"])
        return {group: InputStatistics.from_state(handle.get_tensor(group[0]), counts[group[0]]) for group in stage}


def statistics_forward_seconds(path: Path) -> float:
    with safe_open(str(path), framework="pt") as handle:
        return float(handle.metadata().get("forward_seconds", 0.0))


def save_linears(block: nn.Module, adapter: ArchitectureAdapter, names: list[str], path: Path,
                 factors: dict[str, SparseLowRank] | None = None) -> None:
    """The solved weights of `names`, plus "<name>:sparse|up|down" for linears with a sparse + low-rank form."""
    tensors = {name: adapter.read_weight(block.get_submodule(name)) for name in names}
    for name, term in (factors or {}).items():
        tensors.update({f"{name}:sparse": term.sparse, f"{name}:up": term.up, f"{name}:down": term.down})
    _save(tensors, path)


def load_linears(block: nn.Module, adapter: ArchitectureAdapter, path: Path) -> dict[str, SparseLowRank]:
    """Write the solved linears stored in `path` into `block` (in the block's own layout and dtype);
    return their sparse + low-rank forms where stored, by name inside the block."""
    tensors = load_file(str(path))
    for name, weight in tensors.items():
        if ":" not in name:
            adapter.write_weight(block.get_submodule(name), weight)
    return {name: SparseLowRank(tensors[f"{name}:sparse"], tensors[f"{name}:up"], tensors[f"{name}:down"])
            for name in tensors if ":" not in name and f"{name}:up" in tensors}
