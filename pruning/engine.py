"""The layer-wise engine: walks a causal LM block by block with calibration data.

1. One embeddings-only pass: every decoder block is replaced by a pass-through catcher that records
   the exact arguments the model calls it with (masks, rotary tables, per-layer-type variants), and
   block 0's catcher keeps the hidden states. No block is computed.
2. For each block: a working copy moves to the compute device (in the forward dtype); for each
   group of linears in sequential order, hooks accumulate Σ xxᵀ in fp32 (the forward stops as soon as
   the group's input has been seen), the method solves each linear, and the result is written to the
   fp32 master weights and the working copy; then the pruned block re-runs to produce the inputs of
   the next block. Only one block and the activations are on the device at any time.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from pruning.architectures import ArchitectureAdapter, HeadLayout, StructuredUnit, adapter_for
from pruning.methods import MethodConfig, prune_layer
from pruning.shrink import structured_layout, unit_groups, unit_is_pruned, zero_producers
from pruning.statistics import InputStatistics, SparseLowRank
from pruning.structured import StructuredBudget


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs: where, in which dtype, how many sequences per forward, what to skip."""

    device: torch.device = torch.device("cpu")
    forward_dtype: torch.dtype = torch.bfloat16
    batch_size: int = 8
    true_sequential: bool = True
    skip_layers: tuple[str, ...] = ()
    progress: bool = True


@dataclass(frozen=True)
class BlockCall:
    """The arguments, other than the hidden states, that the model passes to one block."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    sparsity: float
    reconstruction_error: float
    relative_error: float
    solve_seconds: float
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class PruneReport:
    """Per-layer records and stage times; `factors` holds the sparse + low-rank terms of methods that
    produce them, by full linear name (on the CPU), for the factored checkpoint."""

    layers: list[LayerReport] = field(default_factory=list)
    capture_seconds: float = 0.0
    forward_seconds: float = 0.0
    solve_seconds: float = 0.0
    factors: dict[str, SparseLowRank] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "capture_seconds": self.capture_seconds,
            "forward_seconds": self.forward_seconds,
            "solve_seconds": self.solve_seconds,
            "layers": [vars(layer) for layer in self.layers],
        }


class _StopForward(Exception):
    """Raised inside a forward pass once everything needed from it has been seen."""


class _ArgumentCatcher(nn.Module):
    """Stands in for a decoder block during the capture pass: records its call, passes hidden states on."""

    def __init__(self, calls: list[BlockCall], hidden_store: list[torch.Tensor] | None, last: bool) -> None:
        super().__init__()
        self.calls = calls
        self.hidden_store = hidden_store
        self.last = last

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls.append(BlockCall(args, kwargs))
        if self.hidden_store is not None:
            self.hidden_store.append(hidden_states.detach())
        if self.last:
            raise _StopForward
        return hidden_states


def capture_block_inputs(model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                         batch_size: int) -> tuple[list[torch.Tensor], list[list[BlockCall]]]:
    """Run the embeddings once; return block 0's hidden states per batch and every block's call arguments."""
    blocks = adapter.blocks(model)
    originals = list(blocks)
    hidden_batches: list[torch.Tensor] = []
    calls: list[list[BlockCall]] = [[] for _ in originals]
    for index in range(len(originals)):
        blocks[index] = _ArgumentCatcher(calls[index], hidden_batches if index == 0 else None,
                                         last=index == len(originals) - 1)
    try:
        with torch.no_grad():
            for batch in input_ids.split(batch_size):
                with contextlib.suppress(_StopForward):
                    model(input_ids=batch, use_cache=False)
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block
    return hidden_batches, calls


def _move(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested in tuples, lists, dicts) to `device`; floating tensors also to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_move(item, device, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _move(item, device, dtype) for key, item in value.items()}
    return value


def _run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    output = block(hidden, *call.args, **call.kwargs)
    return output[0] if isinstance(output, tuple) else output


def collect_input_statistics(
        block: nn.Module, stage: list[tuple[str, ...]], hidden: list[torch.Tensor], calls: list[BlockCall],
        options: EngineOptions, input_producers: tuple[tuple[str, str], ...] = (),
) -> dict[tuple[str, ...], InputStatistics]:
    """Σxxᵀ (fp32) of the inputs of each group in `stage`, one forward over all batches.

    Each forward stops as soon as the stage's last group has seen its input. A group whose first linear
    is never called as a module reads its input from its producer's output (see `ArchitectureAdapter`).
    """
    statistics: dict[tuple[str, ...], InputStatistics] = {}
    handles = []
    last_group = stage[-1]

    def hook_for(group: tuple[str, ...]) -> Callable[..., None]:
        def accumulate(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            activations = inputs[0]
            if group not in statistics:
                statistics[group] = InputStatistics(activations.shape[-1], activations.device)
            statistics[group].add(activations)
            if group == last_group:
                raise _StopForward
        return accumulate

    def producer_hook_for(group: tuple[str, ...]) -> Callable[..., None]:
        width = int(cast(torch.Tensor, block.get_submodule(group[0]).weight).shape[1])
        accumulate = hook_for(group)

        def from_output(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            accumulate(module, (output[..., :width],))
        return from_output

    producers = dict(input_producers)
    for group in stage:
        if group[0] in producers:
            handles.append(block.get_submodule(producers[group[0]]).register_forward_hook(producer_hook_for(group)))
        else:
            handles.append(block.get_submodule(group[0]).register_forward_pre_hook(hook_for(group)))
    try:
        with torch.no_grad():
            for batch, call in zip(hidden, calls, strict=True):
                with contextlib.suppress(_StopForward):
                    _run_block(block, batch.to(options.device, options.forward_dtype), call)
    finally:
        for handle in handles:
            handle.remove()
    return statistics


class BlockPruner:
    """Prunes one decoder block in place, given its input activations and call arguments."""

    def __init__(self, adapter: ArchitectureAdapter, method: MethodConfig, options: EngineOptions,
                 report: PruneReport, layout: HeadLayout | None = None) -> None:
        """`layout` (the model's head layout) is needed by structured methods, which solve only each
        sub-block's second linear and then zero the rows that produced its removed column groups."""
        self.adapter = adapter
        self.method = method
        self.options = options
        self.report = report
        self.layout = layout
        self.units: dict[str, StructuredUnit] = {}
        if isinstance(method, StructuredBudget):
            if layout is None:
                raise ValueError("structured methods need the model's head layout (see `structured_layout`)")
            self.units = {unit.target: unit for unit in adapter.structured_units if unit_is_pruned(unit, method)}

    def prunable_groups(self, block_prefix: str) -> list[tuple[str, ...]]:
        """The block's linear groups with skipped layers removed (groups left empty are dropped); for a
        structured method only the second linears of the sub-blocks it prunes."""
        groups = []
        for group in self.adapter.linear_groups:
            if self.units:
                group = tuple(name for name in group if name in self.units)
            kept = tuple(name for name in group if not any(
                fnmatch.fnmatch(f"{block_prefix}.{name}", pattern) for pattern in self.options.skip_layers))
            if kept:
                groups.append(kept)
        return groups

    def stages(self, block_prefix: str) -> list[list[tuple[str, ...]]]:
        """Groups solved from one statistics pass each: one group per stage when true-sequential."""
        groups = self.prunable_groups(block_prefix)
        return [[group] for group in groups] if self.options.true_sequential else [groups]

    def prepare(self, block: nn.Module, calls: list[BlockCall]) -> tuple[nn.Module, list[BlockCall]]:
        """A working copy of the block and its call arguments on the compute device, in the forward dtype."""
        device, dtype = self.options.device, self.options.forward_dtype
        working = copy.deepcopy(block).to(device=device, dtype=dtype)
        return working, [BlockCall(_move(call.args, device, dtype), _move(call.kwargs, device, dtype))
                         for call in calls]

    def __call__(self, block: nn.Module, block_prefix: str, hidden: list[torch.Tensor],
                 calls: list[BlockCall]) -> list[torch.Tensor]:
        """Prune all stages of `block` in place and return its outputs for the next block."""
        working, device_calls = self.prepare(block, calls)
        for stage in self.stages(block_prefix):
            statistics = self.collect_statistics(working, stage, hidden, device_calls)
            self.solve_stage(block, working, block_prefix, stage, statistics)
        return self.propagate(working, hidden, device_calls)

    def propagate(self, working: nn.Module, hidden: list[torch.Tensor], calls: list[BlockCall]) -> list[torch.Tensor]:
        """The block's outputs (on the CPU), which are the next block's inputs."""
        started = time.perf_counter()
        with torch.no_grad():
            outputs = [_run_block(working, batch.to(self.options.device, self.options.forward_dtype), call).to("cpu")
                       for batch, call in zip(hidden, calls, strict=True)]
        self.report.forward_seconds += time.perf_counter() - started
        return outputs

    def collect_statistics(self, working: nn.Module, stage: list[tuple[str, ...]], hidden: list[torch.Tensor],
                           calls: list[BlockCall]) -> dict[tuple[str, ...], InputStatistics]:
        """Σxxᵀ of the stage's inputs (see `collect_input_statistics`), timed into the report."""
        started = time.perf_counter()
        statistics = collect_input_statistics(working, stage, hidden, calls, self.options, self.adapter.input_producers)
        self.report.forward_seconds += time.perf_counter() - started
        return statistics

    def solve_stage(self, block: nn.Module, working: nn.Module, block_prefix: str, stage: list[tuple[str, ...]],
                    statistics: dict[tuple[str, ...], InputStatistics]) -> list[str]:
        """Solve every linear of the stage; write results to the master block and the working copy.

        Returns the names of the linears written (a structured unit's producers included)."""
        written = []
        for group in stage:
            for name in group:
                written += self._solve_linear(block, working, block_prefix, name, statistics[group])
        return written

    def _solve_linear(self, block: nn.Module, working: nn.Module, block_prefix: str, name: str,
                      statistics: InputStatistics) -> list[str]:
        started = time.perf_counter()
        master = block.get_submodule(name)
        weight = self.adapter.read_weight(master).to(self.options.device)
        unit = self.units.get(name)
        groups = unit_groups(block, self.adapter, unit, cast(HeadLayout, self.layout)) if unit else None
        result = prune_layer(weight, statistics, self.method, groups)
        self.adapter.write_weight(master, result.weight.to("cpu"))
        self.adapter.write_weight(working.get_submodule(name), result.weight)
        written = [name]
        if unit is not None and groups is not None:
            # A removed group's columns are zero: zero the rows that produced them, in both copies.
            kept = result.mask[0].view(groups.count, groups.size).all(dim=1).cpu()
            removed = torch.nonzero(~kept).flatten()
            for copy_of_block in (block, working):
                written += zero_producers(copy_of_block, self.adapter, unit, groups, cast(HeadLayout, self.layout),
                                          removed)
            written = list(dict.fromkeys(written))
        if result.factors is not None:
            self.report.factors[f"{block_prefix}.{name}"] = result.factors.to("cpu")
        elapsed = time.perf_counter() - started
        self.report.solve_seconds += elapsed
        self.report.layers.append(LayerReport(
            name=f"{block_prefix}.{name}", shape=(int(weight.shape[0]), int(weight.shape[1])),
            sparsity=result.sparsity, reconstruction_error=result.reconstruction_error,
            relative_error=result.relative_error, solve_seconds=elapsed, details=result.details))
        return written


def prune_model(model: nn.Module, input_ids: torch.Tensor, method: MethodConfig,
                options: EngineOptions = EngineOptions()) -> PruneReport:
    """Prune every decoder-block linear of `model` (kept on the CPU) in place; return per-layer records."""
    adapter = adapter_for(model)
    report = PruneReport()
    started = time.perf_counter()
    hidden, calls = capture_block_inputs(model, adapter, input_ids, options.batch_size)
    hidden = [batch.to(options.forward_dtype) for batch in hidden]
    report.capture_seconds = time.perf_counter() - started
    layout = structured_layout(adapter, method, cast(Any, model).config)
    pruner = BlockPruner(adapter, method, options, report, layout)
    blocks = adapter.blocks(model)
    for index in tqdm(range(len(blocks)), desc="blocks", disable=not options.progress):
        hidden = pruner(blocks[index], f"{adapter.blocks_path}.{index}", hidden, calls[index])
        calls[index] = []
    return report
