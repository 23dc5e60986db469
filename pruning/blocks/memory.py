"""Where a run's calibration activations live: on the GPU when it has room, else in host memory within the budget,
else in files (one batch in memory at a time)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pruning.blocks.activations import ActivationSet, activation_bytes, default_memory_budget
from pruning.errors import ConfigError


@dataclass(frozen=True)
class MemoryPlan:
    """`in_memory`: activation sets are held (on `device`); else they live in files. `reuse_outputs`: finished
    sub-modules' outputs may be kept too (one more set, see `pruning.blocks.finished_submodules`)."""

    in_memory: bool
    device: torch.device
    reuse_outputs: bool
    pinned: bool  # host-held batches page-locked, for fast copies to the GPU that computes
    scratch: Callable[[], Path] | None  # a new folder for sets that do not fit and have no folder of their own

    @classmethod
    def choose(cls, windows: tuple[int, int] | None, batch_size: int, hidden_size: int, dtype: torch.dtype,
               device: torch.device, dense_stream: bool, budget: int | None,
               scratch: Callable[[], Path] | None) -> MemoryPlan:
        """Two activation sets (a block's inputs and outputs; four with the dense stream) must fit: on the GPU
        when they take at most half of its free memory, else in the host budget (None: half of the memory
        available now), else they go to disk. `windows` is (samples, seqlen) of the calibration set."""
        cpu, pinned = torch.device("cpu"), device.type == "cuda"
        if windows is None:
            return cls(True, cpu, True, pinned, scratch)
        batches = -(-windows[0] // batch_size)
        size = activation_bytes(batches, batch_size, windows[1], hidden_size, dtype) * (2 if dense_stream else 1)
        if device.type == "cuda" and 3 * size <= torch.cuda.mem_get_info(device)[0] // 2:
            return cls(True, device, True, pinned, scratch)
        budget = budget if budget is not None else default_memory_budget()
        return cls(2 * size <= budget, cpu, 3 * size <= budget, pinned, scratch)

    def new_set(self, directory: Path | None) -> ActivationSet:
        """An empty activation set, written to `directory` when given; a set that does not fit the memory budget
        and has no directory goes to a scratch folder."""
        if directory is None and not self.in_memory:
            if self.scratch is None:
                raise ConfigError("engine.memory_budget: the calibration activations do not fit the budget and this "
                                  "run has no block store to spill them to; raise the budget or use a store")
            directory = self.scratch()
        return ActivationSet(directory, in_memory=self.in_memory, device=self.device, pinned=self.pinned)
