"""Calibration activations between blocks: kept in memory while they fit a budget, else in files on disk.

An `ActivationSet` is one tensor per calibration batch (batch, seq, hidden). With a directory it is also
written there, one safetensors file per batch (`batch_00000.safetensors`), as soon as each batch is added:
that is what lets a killed run resume at the next block. When the set does not fit in memory the batches
live only in those files and are read back one at a time, so memory holds one batch whatever the set's size.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pruning.io import atomic_path

BATCH_FILE = "batch_{index:05d}.safetensors"


class ActivationSet:
    """A list of batches; each batch is kept on `device` (in memory) and/or in a file under `directory`."""

    def __init__(self, directory: Path | None = None, in_memory: bool = True,
                 device: torch.device | str = "cpu", pinned: bool = False) -> None:
        """An empty set; `directory`, when given, is emptied (created if missing) to receive its batches.
        `pinned` keeps batches held in host memory page-locked, for fast copies to a GPU."""
        if directory is None and not in_memory:
            raise ValueError("an activation set kept out of memory needs a directory")
        self.directory = Path(directory) if directory is not None else None
        self.in_memory = in_memory
        self.device = torch.device(device)
        self.pinned = pinned and self.device.type == "cpu" and torch.cuda.is_available()
        self._batches: list[torch.Tensor | None] = []
        self._count = 0
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True)

    @classmethod
    def from_directory(cls, directory: Path, in_memory: bool, device: torch.device | str = "cpu") -> ActivationSet:
        """The set saved in `directory` (its batch files in order), loaded into memory or left on disk."""
        activations = cls(in_memory=True, device=device)
        activations.directory = Path(directory)
        activations._count = len(list(activations.directory.glob("batch_*.safetensors")))
        activations.in_memory = in_memory
        if in_memory:
            activations._batches = [activations._read(index).to(device) for index in range(activations._count)]
        return activations

    def __len__(self) -> int:
        return self._count

    def _path(self, index: int) -> Path:
        assert self.directory is not None
        return self.directory / BATCH_FILE.format(index=index)

    def _read(self, index: int) -> torch.Tensor:
        with safe_open(str(self._path(index)), framework="pt") as handle:
            return handle.get_tensor("hidden_states")

    def append(self, batch: torch.Tensor) -> None:
        if self.directory is not None:
            with atomic_path(self._path(self._count)) as staging:
                save_file({"hidden_states": batch.detach().contiguous().cpu()}, str(staging))
        if self.in_memory:
            kept = batch.detach().to(self.device)
            self._batches.append(kept.pin_memory() if self.pinned else kept)
        self._count += 1

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self._count:
            raise IndexError(index)
        if not self.in_memory:
            return self._read(index)
        batch = self._batches[index]
        if batch is None:
            raise ValueError(f"activation batch {index} was released")
        return batch

    def release(self, index: int) -> None:
        """Drop batch `index` from memory (its file, if any, stays): for a last pass that consumes the set."""
        if self.in_memory:
            self._batches[index] = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[index] for index in range(self._count))

    def delete(self) -> None:
        """Free the batches and remove the directory."""
        self._batches = []
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def activation_bytes(batches: int, batch_size: int, seqlen: int, hidden_size: int, dtype: torch.dtype) -> int:
    """Bytes of one activation set: batches x (batch, seq, hidden) elements of `dtype`."""
    return batches * batch_size * seqlen * hidden_size * torch.empty((), dtype=dtype).element_size()


def _cgroup_headroom() -> int | None:
    """Bytes this process's memory cgroup (v1 or v2, and its parents) still allows, or None without a limit."""
    headroom: int | None = None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":  # cgroup v1
            root, limit_file, usage_file = (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes",
                                            "memory.usage_in_bytes")
        elif controllers == "":  # cgroup v2
            root, limit_file, usage_file = Path("/sys/fs/cgroup"), "memory.max", "memory.current"
        else:
            continue
        directory = root / path.lstrip("/")
        while True:
            try:
                limit_text = (directory / limit_file).read_text().strip()
                usage = int((directory / usage_file).read_text())
            except (OSError, ValueError):
                limit_text, usage = "max", 0
            if limit_text != "max" and int(limit_text) < 1 << 60:
                room = max(int(limit_text) - usage, 0)
                headroom = room if headroom is None else min(headroom, room)
            if directory == root:
                break
            directory = directory.parent
    return headroom


def available_memory() -> int:
    """Bytes of memory this process can still take: the system's available memory, capped by its cgroup."""
    available = int(psutil.virtual_memory().available)
    headroom = _cgroup_headroom()
    return available if headroom is None else min(available, headroom)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand memory that is free in the allocator's heap back to the system (glibc; elsewhere nothing).

    A block's forward passes allocate and free tensors of 10-30 MB; glibc serves those from its heap once its
    mmap threshold has adapted, and the heap fragments, so without this the resident size grows by tens of
    MB per block (measured on SmolLM2: from 0.4 to 1.5 GB over 30 blocks)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def default_memory_budget() -> int:
    """Half of the memory available when the run starts: room for activations, with the rest left for the
    block being pruned, its statistics and the solver."""
    return available_memory() // 2
