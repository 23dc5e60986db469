"""Pruning one decoder block in place: for each stage of linears, one statistics forward over the calibration
batches, then each linear's solve by its method; optionally a reconstruction of the whole block toward the dense
block's outputs; then one more forward that gives the next block its inputs."""

from __future__ import annotations

import copy
import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from pruning.blocks.activations import ActivationSet
from pruning.blocks.calls import BlockCall, move, on_device, run_block
from pruning.blocks.dense_targets import dense_target_weight
from pruning.blocks.finished_submodules import finished_children, recording, reusing
from pruning.blocks.reconstruction import ReconstructionConfig, reconstruct_block
from pruning.blocks.report import LayerReport
from pruning.blocks.statistics import Group, collect_input_statistics
from pruning.methods.base import InputStatistics, PairedInputStatistics, SparseLowRank
from pruning.methods.registry import MethodConfig, prune_layer
from pruning.methods.structured import StructuredBudget
from pruning.models.access import block_prefix
from pruning.models.architectures import ArchitectureAdapter, HeadLayout, StructuredUnit
from pruning.models.shrink import unit_groups, unit_is_pruned, zero_producers


@dataclass
class BlockResult:
    """What pruning one block produced, besides the block's new weights (written into it in place)."""

    layers: list[LayerReport] = field(default_factory=list)
    factors: dict[str, SparseLowRank] = field(default_factory=dict)  # sparse + low-rank terms, on the CPU
    forward_seconds: float = 0.0
    reconstruction: dict[str, float] = field(default_factory=dict)


@dataclass
class DenseStream:
    """The dense model's inputs to a block and the set its outputs (on those inputs) are appended to."""

    inputs: ActivationSet
    outputs: ActivationSet


class BlockPruner:
    """Prunes one decoder block in place, given its input activations and call arguments."""

    def __init__(self, adapter: ArchitectureAdapter, method: MethodConfig, layout: HeadLayout | None,
                 device: torch.device, dtype: torch.dtype, *, true_sequential: bool, skip_layers: tuple[str, ...],
                 dense_targets: bool, reconstruction: ReconstructionConfig | None) -> None:
        """`layout` (the model's head layout) is needed by structured methods, which solve only each
        sub-block's second linear and then zero the rows that produced its removed column groups."""
        self.adapter, self.method, self.layout = adapter, method, layout
        self.device, self.dtype = device, dtype
        self.true_sequential, self.skip_layers = true_sequential, skip_layers
        self.dense_targets, self.reconstruction = dense_targets, reconstruction
        # Whether finished sub-modules' outputs may be kept in memory and reused (an activation set per child).
        self.reuse_outputs = True
        self.units: dict[str, StructuredUnit] = {}
        if isinstance(method, StructuredBudget):
            if layout is None:
                raise ValueError("structured methods need the model's head layout (see `structured_layout`)")
            self.units = {unit.target: unit for unit in adapter.structured_units if unit_is_pruned(unit, method)}

    def prunable_groups(self, prefix: str) -> list[Group]:
        """The block's linear groups with skipped layers removed (groups left empty are dropped); for a
        structured method only the second linears of the sub-blocks it prunes."""
        groups = []
        for group in self.adapter.linear_groups:
            if self.units:
                group = tuple(name for name in group if name in self.units)
            kept = tuple(name for name in group if not any(
                fnmatch.fnmatch(f"{prefix}.{name}", pattern) for pattern in self.skip_layers))
            if kept:
                groups.append(kept)
        return groups

    def stages(self, prefix: str) -> list[list[Group]]:
        """Groups solved from one statistics pass each: one group per stage when true-sequential."""
        groups = self.prunable_groups(prefix)
        return [[group] for group in groups] if self.true_sequential else [groups]

    def working_copy(self, block: nn.Module) -> nn.Module:
        """The block on the compute device in the forward dtype (see `on_device`)."""
        return on_device(block, self.device, self.dtype)

    def device_calls(self, calls: list[BlockCall]) -> list[BlockCall]:
        return [BlockCall(move(call.args, self.device, self.dtype), move(call.kwargs, self.device, self.dtype))
                for call in calls]

    def propagate(self, working: nn.Module, hidden: ActivationSet, calls: list[BlockCall],
                  outputs: ActivationSet) -> None:
        """Append the block's outputs on every batch of `hidden` to `outputs`, releasing each input batch from
        memory once used (this is the last pass over them): inputs and outputs together take one set's memory."""
        with torch.no_grad():
            for index, call in enumerate(calls):
                batch = hidden[index].to(self.device, self.dtype)
                hidden.release(index)
                outputs.append(run_block(working, batch, call))

    def __call__(self, block: nn.Module, block_index: int, hidden: ActivationSet | None, calls: list[BlockCall],
                 outputs: ActivationSet | None, dense: DenseStream | None = None,
                 method: MethodConfig | None = None) -> BlockResult:
        """Prune all stages of `block` in place; append its outputs (the next block's inputs) to `outputs`, and with
        `dense` the original block's outputs on the dense inputs to `dense.outputs`. `method` replaces the
        pruner's method for this block (a layer budget's per-block sparsity).

        Without calibration data (`hidden` None) every linear is solved without input statistics."""
        prefix = block_prefix(self.adapter, block_index)
        working = self.working_copy(block)
        device_calls = self.device_calls(calls)
        result = BlockResult()
        stages = self.stages(prefix)
        reused: dict[str, list[Any]] = {}  # finished children's outputs (see pruning.blocks.finished_submodules)
        dense_block = copy.deepcopy(working) if dense is not None else None
        if dense is not None and dense_block is not None:
            started = time.perf_counter()
            with torch.no_grad():
                for batch_index, call in enumerate(device_calls):
                    batch = dense.inputs[batch_index].to(self.device, self.dtype)
                    dense.outputs.append(run_block(dense_block, batch, call))
            result.forward_seconds += time.perf_counter() - started
        paired = (dense_block, dense.inputs) if dense is not None and self.dense_targets else None
        for stage_index, stage in enumerate(stages):
            statistics: dict[Group, InputStatistics | None] = dict.fromkeys(stage)
            if hidden is not None:
                remaining = [name for later in stages[stage_index:] for group in later for name in group]
                finished = [child for child in finished_children(self.adapter, remaining) if child not in reused]
                started = time.perf_counter()
                with reusing(working, reused), recording(working, finished if self.reuse_outputs else [],
                                                         len(hidden)) as recorded:
                    statistics.update(collect_input_statistics(
                        working, stage, hidden, device_calls, self.device, self.dtype, self.adapter.input_producers,
                        cast(tuple[nn.Module, ActivationSet] | None, paired)))
                reused.update(recorded)
                result.forward_seconds += time.perf_counter() - started
            for group in stage:
                for name in group:
                    self._solve_linear(block, working, block_index, name, statistics[group], result,
                                       method or self.method)
        if hidden is not None and dense is not None and self.reconstruction is not None:
            reused.clear()  # the finished children's recorded outputs predate the new weights
            self._reconstruct(block, working, prefix, hidden, device_calls, dense.outputs, result)
        if hidden is not None and outputs is not None:
            started = time.perf_counter()
            with reusing(working, reused, consume=True):
                self.propagate(working, hidden, device_calls, outputs)
            result.forward_seconds += time.perf_counter() - started
        return result

    def _reconstruct(self, block: nn.Module, working: nn.Module, prefix: str, hidden: ActivationSet,
                     calls: list[BlockCall], targets: ActivationSet, result: BlockResult) -> None:
        """Optimise the block's pruned linears toward the dense block's outputs; write the weights into `block` (its
        stored dtype) and the forward copy (as stored)."""
        names = [name for group in self.prunable_groups(prefix) for name in group]
        weights, result.reconstruction = reconstruct_block(
            working, names, hidden, calls, targets, cast(ReconstructionConfig, self.reconstruction))
        for name, weight in weights.items():
            stored = block.get_submodule(name)
            cast(torch.Tensor, stored.weight).data.copy_(weight)
            if working is not block:
                cast(torch.Tensor, working.get_submodule(name).weight).data.copy_(cast(torch.Tensor, stored.weight))

    def _solve_linear(self, block: nn.Module, working: nn.Module, block_index: int, name: str,
                      statistics: InputStatistics | None, result: BlockResult, method: MethodConfig) -> None:
        started = time.perf_counter()
        stored = block.get_submodule(name)
        weight = self.adapter.read_weight(stored).to(self.device)
        details: dict[str, float] = {}
        if isinstance(statistics, PairedInputStatistics):
            # Fit the dense model's outputs: the method prunes W* = W C G⁻¹ against the pruned inputs' G.
            target = dense_target_weight(weight, statistics)
            details["dense_target_shift"] = float((target - weight).norm() / weight.norm().clamp_min(1e-12))
            weight = target
        unit = self.units.get(name)
        groups = unit_groups(block, self.adapter, unit, cast(HeadLayout, self.layout)) if unit else None
        solved = prune_layer(weight, statistics, method, groups)
        written = [name]
        self.adapter.write_weight(stored, solved.weight)
        if unit is not None and groups is not None:
            # A removed group's columns are zero: zero the rows that produced them.
            kept = solved.mask[0].view(groups.count, groups.size).all(dim=1).cpu()
            written += zero_producers(block, self.adapter, unit, groups, cast(HeadLayout, self.layout),
                                      torch.nonzero(~kept).flatten())
        if working is not block:
            # The forward copy takes the weights as stored (rounded to the stored dtype), as the saved model has them.
            for linear in dict.fromkeys(written):
                self.adapter.write_weight(working.get_submodule(linear),
                                          self.adapter.read_weight(block.get_submodule(linear)))
        if solved.factors is not None:
            result.factors[name] = solved.factors.to("cpu")
        result.layers.append(LayerReport(
            name=f"{block_prefix(self.adapter, block_index)}.{name}", block=block_index,
            shape=(int(weight.shape[0]), int(weight.shape[1])), sparsity=solved.sparsity,
            reconstruction_error=solved.reconstruction_error, relative_error=solved.relative_error,
            solve_seconds=time.perf_counter() - started, details={**solved.details, **details}))


def linear_counts(block: nn.Module, adapter: ArchitectureAdapter,
                  factors: dict[str, SparseLowRank]) -> tuple[int, int]:
    """(parameters, removed) over the block's decoder linears; a sparse + low-rank linear keeps
    nnz(S) + r(d_out + d_in) parameters."""
    total = removed = 0
    for name in adapter.linear_names:
        weight = cast(torch.Tensor, block.get_submodule(name).weight)
        term = factors.get(name)
        removed += weight.numel() - term.kept_parameters if term is not None else int((weight == 0).sum())
        total += weight.numel()
    return total, removed
