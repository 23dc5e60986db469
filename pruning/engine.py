"""The layer-wise engine: walks a causal LM block by block with calibration data.

1. One embeddings-only pass: every decoder block is replaced by a pass-through catcher that records
   the exact arguments the model calls it with (masks, rotary tables, per-layer-type variants), and
   block 0's catcher keeps the hidden states. No block is computed.
2. For each block: the block is loaded (from disk, when the model is streamed); for each group of
   linears in sequential order (all groups at once with `true_sequential=False`), hooks accumulate
   Σ xxᵀ in fp32 (the forward stops as soon as the stage's inputs have been seen), the method solves
   each linear, and the result is written into the block; then the pruned block re-runs to produce the
   inputs of the next block, and the block is written out and released. Only one block and the
   activations are in memory at any time; activations past `memory_budget` live in files.

With `targets="dense"` or a block reconstruction, a second stream runs beside the pruned one: the dense model's
activations, block by block (each block's original weights on the dense inputs). Each linear is then fitted to the
dense model's outputs (see `pruning.blocks.dense_targets`), and/or each pruned block is optimised toward the
dense block's outputs (see `pruning.blocks.reconstruction`).

Data-free methods (`needs_calibration` false) skip the calibration passes altogether. With a
`BlockStore`, every finished block is kept on disk under a key of everything that determines it, so a
second run reuses it and a killed run resumes at the first unfinished block.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from pruning.blocks.activations import ActivationSet, activation_bytes, default_memory_budget, release_free_memory
from pruning.blocks.budgets import LayerBudget, block_sparsities, outlier_ratio
from pruning.blocks.calls import (
    BlockCall,
    StopForward,
    capture_block_inputs,
    move,
    on_device,
    run_block,
)
from pruning.blocks.dense_targets import dense_target_weight
from pruning.blocks.finished_submodules import finished_children, recording, reusing
from pruning.blocks.reconstruction import ReconstructionConfig, reconstruct_block
from pruning.blocks.store import BlockRecord, BlockStore
from pruning.errors import ConfigError
from pruning.io import write_json
from pruning.methods.base import InputStatistics, PairedInputStatistics, SparseLowRank
from pruning.methods.registry import MethodConfig, needs_calibration, prune_layer
from pruning.methods.structured import StructuredBudget
from pruning.models.access import InMemoryModel, ModelAccess, block_prefix, block_state
from pruning.models.architectures import ArchitectureAdapter, HeadLayout, StructuredUnit
from pruning.models.shrink import removed_groups, structured_layout, unit_groups, unit_is_pruned, zero_producers


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs: where, in which dtype, how many sequences per forward, what to skip, and how much
    memory calibration activations may take before they go to disk (None: half of the available memory)."""

    device: torch.device = torch.device("cpu")
    forward_dtype: torch.dtype = torch.bfloat16
    batch_size: int = 8
    true_sequential: bool = True
    skip_layers: tuple[str, ...] = ()
    progress: bool = True
    memory_budget: int | None = None
    targets: str = "pruned"  # "dense": fit each linear to the dense model's outputs
    reconstruction: ReconstructionConfig | None = None
    budget: LayerBudget | None = None  # non-uniform sparsity across blocks (unstructured methods)

    @property
    def dense_stream(self) -> bool:
        """Whether the dense model's activations are carried beside the pruned model's."""
        return self.targets == "dense" or self.reconstruction is not None


@dataclass
class LayerReport:
    name: str  # the linear's full name, e.g. model.layers.3.mlp.down_proj
    block: int
    shape: tuple[int, int]
    sparsity: float
    reconstruction_error: float | None
    relative_error: float | None
    solve_seconds: float
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class PruneReport:
    """Per-layer records, stage times and counts over all blocks; `factors` holds the sparse + low-rank terms of
    methods that produce them, by full linear name (on the CPU), when the model is pruned in memory."""

    layers: list[LayerReport] = field(default_factory=list)
    capture_seconds: float = 0.0
    forward_seconds: float = 0.0
    solve_seconds: float = 0.0
    io_seconds: float = 0.0
    blocks_computed: int = 0
    blocks_reused: int = 0
    linear_parameters: int = 0
    linear_removed: int = 0
    removed_groups: dict[str, list[int]] = field(default_factory=dict)
    block_sparsity: list[float] = field(default_factory=list)  # each block's target, with a layer budget
    activations_in_memory: bool = True
    factors: dict[str, SparseLowRank] = field(default_factory=dict)
    reconstruction: list[dict[str, float]] = field(default_factory=list)

    def add_block(self, record: BlockRecord, reused: bool) -> None:
        self.layers += [LayerReport(**{**layer, "shape": tuple(layer["shape"])}) for layer in record.layers]
        if record.reconstruction:
            self.reconstruction.append({"block": float(record.index), **record.reconstruction})
        self.linear_parameters += record.linear_parameters
        self.linear_removed += record.linear_removed
        for kind, count in record.removed_groups.items():
            self.removed_groups.setdefault(kind, []).append(count)
        if reused:
            self.blocks_reused += 1
        else:
            self.blocks_computed += 1
            self.forward_seconds += record.forward_seconds
            self.solve_seconds += sum(layer["solve_seconds"] for layer in record.layers)

    @property
    def decoder_linear_sparsity(self) -> float:
        """Fraction of the decoder-block linears' parameters removed (embeddings and lm_head excluded)."""
        return self.linear_removed / max(self.linear_parameters, 1)


def collect_input_statistics(
        block: nn.Module, stage: list[tuple[str, ...]], hidden: ActivationSet | list[torch.Tensor],
        calls: list[BlockCall], options: EngineOptions, input_producers: tuple[tuple[str, str], ...] = (),
        dense: tuple[nn.Module, ActivationSet] | None = None,
) -> dict[tuple[str, ...], InputStatistics]:
    """Σxxᵀ (fp32) of the inputs of each group in `stage`, one forward over all batches.

    With `dense` (the block's original weights and the dense model's inputs to it), each batch first runs
    through the dense block and the statistics also hold Σ x_dense xᵀ (`PairedInputStatistics`).
    """
    statistics: dict[tuple[str, ...], InputStatistics] = {}
    dense_inputs: dict[tuple[str, ...], torch.Tensor] = {}

    def accumulate(group: tuple[str, ...], activations: torch.Tensor) -> None:
        if group not in statistics:
            kind = PairedInputStatistics if dense is not None else InputStatistics
            statistics[group] = kind(activations.shape[-1], activations.device)
        entry = statistics[group]
        if isinstance(entry, PairedInputStatistics):
            entry.add_pair(activations, dense_inputs.pop(group))
        else:
            entry.add(activations)

    def keep_dense(group: tuple[str, ...], activations: torch.Tensor) -> None:
        dense_inputs[group] = activations

    def forward(module: nn.Module, batch: torch.Tensor, call: BlockCall,
                on_input: Callable[[tuple[str, ...], torch.Tensor], None]) -> None:
        with stage_inputs(module, stage, input_producers, on_input), contextlib.suppress(StopForward):
            run_block(module, batch.to(options.device, options.forward_dtype), call)

    with torch.no_grad():
        for index, (batch, call) in enumerate(zip(hidden, calls, strict=True)):
            if dense is not None:
                forward(dense[0], dense[1][index], call, keep_dense)
            forward(block, batch, call, accumulate)
    return statistics


@contextlib.contextmanager
def stage_inputs(block: nn.Module, stage: list[tuple[str, ...]], input_producers: tuple[tuple[str, str], ...],
                 on_input: Callable[[tuple[str, ...], torch.Tensor], None]) -> Iterator[None]:
    """Hooks that pass each group's input to `on_input(group, x)`; the forward stops (StopForward) once the stage's
    last group has seen its input. A group whose first linear is never called as a module reads its input from
    its producer's output (see `ArchitectureAdapter`)."""
    last_group = stage[-1]

    def hook_for(group: tuple[str, ...]) -> Callable[..., None]:
        def seen(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            on_input(group, inputs[0])
            if group == last_group:
                raise StopForward
        return seen

    def producer_hook_for(group: tuple[str, ...]) -> Callable[..., None]:
        width = int(cast(torch.Tensor, block.get_submodule(group[0]).weight).shape[1])
        seen = hook_for(group)

        def from_output(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen(module, (output[..., :width],))
        return from_output

    producers = dict(input_producers)
    handles = []
    for group in stage:
        if group[0] in producers:
            handles.append(block.get_submodule(producers[group[0]]).register_forward_hook(producer_hook_for(group)))
        else:
            handles.append(block.get_submodule(group[0]).register_forward_pre_hook(hook_for(group)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class BlockResult:
    """What pruning one block produced, besides the block's new weights (written into it in place)."""

    layers: list[LayerReport]
    factors: dict[str, SparseLowRank]
    forward_seconds: float
    reconstruction: dict[str, float] = field(default_factory=dict)


@dataclass
class DenseStream:
    """The dense model's inputs to a block and the set its outputs (on those inputs) are appended to."""

    inputs: ActivationSet
    outputs: ActivationSet


class BlockPruner:
    """Prunes one decoder block in place, given its input activations and call arguments."""

    def __init__(self, adapter: ArchitectureAdapter, method: MethodConfig, options: EngineOptions,
                 layout: HeadLayout | None = None) -> None:
        """`layout` (the model's head layout) is needed by structured methods, which solve only each
        sub-block's second linear and then zero the rows that produced its removed column groups."""
        self.adapter = adapter
        self.method = method
        self.options = options
        self.layout = layout
        # Whether finished sub-modules' outputs may be kept in memory and reused (an activation set per child).
        self.reuse_outputs = True
        self.units: dict[str, StructuredUnit] = {}
        if isinstance(method, StructuredBudget):
            if layout is None:
                raise ValueError("structured methods need the model's head layout (see `structured_layout`)")
            self.units = {unit.target: unit for unit in adapter.structured_units if unit_is_pruned(unit, method)}

    def prunable_groups(self, prefix: str) -> list[tuple[str, ...]]:
        """The block's linear groups with skipped layers removed (groups left empty are dropped); for a
        structured method only the second linears of the sub-blocks it prunes."""
        groups = []
        for group in self.adapter.linear_groups:
            if self.units:
                group = tuple(name for name in group if name in self.units)
            kept = tuple(name for name in group if not any(
                fnmatch.fnmatch(f"{prefix}.{name}", pattern) for pattern in self.options.skip_layers))
            if kept:
                groups.append(kept)
        return groups

    def stages(self, prefix: str) -> list[list[tuple[str, ...]]]:
        """Groups solved from one statistics pass each: one group per stage when true-sequential."""
        groups = self.prunable_groups(prefix)
        return [[group] for group in groups] if self.options.true_sequential else [groups]

    def working_copy(self, block: nn.Module) -> nn.Module:
        """The block on the compute device in the forward dtype (see `on_device`)."""
        return on_device(block, self.options.device, self.options.forward_dtype)

    def device_calls(self, calls: list[BlockCall]) -> list[BlockCall]:
        device, dtype = self.options.device, self.options.forward_dtype
        return [BlockCall(move(call.args, device, dtype), move(call.kwargs, device, dtype)) for call in calls]

    def propagate(self, working: nn.Module, hidden: ActivationSet, calls: list[BlockCall],
                  outputs: ActivationSet) -> None:
        """Append the block's outputs on every batch of `hidden` to `outputs`, releasing each input batch from
        memory once used (this is the last pass over them): inputs and outputs together take one set's memory."""
        with torch.no_grad():
            for index, call in enumerate(calls):
                batch = hidden[index].to(self.options.device, self.options.forward_dtype)
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
        result = BlockResult([], {}, 0.0)
        stages = self.stages(prefix)
        reused: dict[str, list[Any]] = {}  # finished children's outputs (see pruning.blocks.finished_submodules)
        dense_block = copy.deepcopy(working) if dense is not None else None
        if dense is not None and dense_block is not None:
            started = time.perf_counter()
            with torch.no_grad():
                for batch_index, call in enumerate(device_calls):
                    batch = dense.inputs[batch_index].to(self.options.device, self.options.forward_dtype)
                    dense.outputs.append(run_block(dense_block, batch, call))
            result.forward_seconds += time.perf_counter() - started
        paired = (dense_block, dense.inputs) if dense is not None and self.options.targets == "dense" else None
        for stage_index, stage in enumerate(stages):
            statistics: dict[tuple[str, ...], InputStatistics | None] = dict.fromkeys(stage)
            if hidden is not None:
                remaining = [name for later in stages[stage_index:] for group in later for name in group]
                finished = [child for child in finished_children(self.adapter, remaining) if child not in reused]
                started = time.perf_counter()
                with reusing(working, reused), recording(working, finished if self.reuse_outputs else [],
                                                         len(hidden)) as recorded:
                    statistics.update(collect_input_statistics(working, stage, hidden, device_calls, self.options,
                                                               self.adapter.input_producers,
                                                               cast(tuple[nn.Module, ActivationSet] | None, paired)))
                reused.update(recorded)
                result.forward_seconds += time.perf_counter() - started
                release_free_memory()
            for group in stage:
                for name in group:
                    self._solve_linear(block, working, block_index, name, statistics[group], result,
                                       method or self.method)
            release_free_memory()
        if hidden is not None and dense is not None and self.options.reconstruction is not None:
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
            working, names, hidden, calls, targets, cast(ReconstructionConfig, self.options.reconstruction))
        for name, weight in weights.items():
            stored = block.get_submodule(name)
            cast(torch.Tensor, stored.weight).data.copy_(weight)
            if working is not block:
                cast(torch.Tensor, working.get_submodule(name).weight).data.copy_(cast(torch.Tensor, stored.weight))

    def _solve_linear(self, block: nn.Module, working: nn.Module, block_index: int, name: str,
                      statistics: InputStatistics | None, result: BlockResult, method: MethodConfig) -> None:
        started = time.perf_counter()
        stored = block.get_submodule(name)
        weight = self.adapter.read_weight(stored).to(self.options.device)
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
        elapsed = time.perf_counter() - started
        result.layers.append(LayerReport(
            name=f"{block_prefix(self.adapter, block_index)}.{name}", block=block_index,
            shape=(int(weight.shape[0]), int(weight.shape[1])),
            sparsity=solved.sparsity, reconstruction_error=solved.reconstruction_error,
            relative_error=solved.relative_error, solve_seconds=elapsed, details={**solved.details, **details}))


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


class PruneEngine:
    """Prunes a model block by block (see the module docstring); one object serves every driver.

    `run()` prunes all blocks; `prune_block(i)` makes sure block i is finished, computing it from the
    previous block's outputs (held in memory, or in the store), and returns its record.
    """

    def __init__(self, access: ModelAccess, method: MethodConfig, options: EngineOptions,
                 input_ids: torch.Tensor | None = None, store: BlockStore | None = None) -> None:
        self.access = access
        self.method = method
        self.options = options
        self.store = store
        self.adapter = access.adapter
        self.config = cast(Any, access.model).config
        self.needs_data = needs_calibration(method)
        if self.needs_data and input_ids is None:
            raise ValueError(f"{method.method} needs calibration data")
        if options.dense_stream and not self.needs_data:
            raise ConfigError(f"engine.targets / engine.reconstruction: {method.method} is data-free; dense "
                              "targets and block reconstruction need a calibration-based method")
        self.input_ids = input_ids
        self.pruner = BlockPruner(self.adapter, method, options, structured_layout(self.adapter, method, self.config))
        self.report = PruneReport()
        self.activation_device = torch.device("cpu")
        self.report.activations_in_memory = self._activations_fit()
        self._calls: list[list[BlockCall]] | None = None
        self._latest: tuple[int, ActivationSet] | None = None
        self._dense_latest: tuple[int, ActivationSet] | None = None
        self._block_sparsity: list[float] | None = None

    @property
    def num_blocks(self) -> int:
        return self.access.num_blocks

    def close(self) -> None:
        """Drop the run's captured block arguments and activations and remove this process's scratch files
        (finished blocks stay in the store)."""
        for latest in (self._latest, self._dense_latest):
            if latest is not None:
                latest[1].delete()
        self._calls, self._latest, self._dense_latest = None, None, None
        if self.store is not None:
            self.store.close()
        release_free_memory()

    def _activations_fit(self) -> bool:
        """Whether two activation sets (a block's inputs and outputs; four with the dense stream) fit in memory: on
        the GPU when it has room for them (half of its free memory), else in the host memory budget, else they go
        to disk. One more set, the reused outputs of finished sub-modules, is kept only where it fits too."""
        if self.input_ids is None:
            return True
        batches = -(-self.input_ids.shape[0] // self.options.batch_size)
        size = activation_bytes(batches, self.options.batch_size, self.input_ids.shape[1],
                                int(self.config.get_text_config().hidden_size), self.options.forward_dtype)
        size *= 2 if self.options.dense_stream else 1
        if self.options.device.type == "cuda" and 3 * size <= torch.cuda.mem_get_info(self.options.device)[0] // 2:
            self.activation_device = self.options.device
            return True
        budget = self.options.memory_budget if self.options.memory_budget is not None else default_memory_budget()
        self.pruner.reuse_outputs = 3 * size <= budget
        return 2 * size <= budget

    def _new_activations(self, directory: Path | None) -> ActivationSet:
        """An empty activation set written to `directory` (when given); a set that does not fit the memory budget
        and has no directory goes to a scratch folder."""
        in_memory = self.report.activations_in_memory
        if directory is None and not in_memory:
            if self.store is None:
                raise ConfigError("engine.memory_budget: the calibration activations do not fit the budget and this "
                                 "run has no block store to spill them to; raise the budget or use a store")
            directory = Path(tempfile.mkdtemp(dir=self.store.scratch))
        return ActivationSet(directory, in_memory=in_memory, device=self.activation_device,
                             pinned=self.options.device.type == "cuda")

    def run(self) -> PruneReport:
        """Prune every block (reusing finished ones from the store); return the report over all blocks."""
        for index in tqdm(range(self.num_blocks), desc=f"{self.method.method} blocks", unit="block",
                          disable=not self.options.progress):
            self.prune_block(index)
        return self.report

    def prune_block(self, index: int) -> BlockRecord:
        if self.store is not None and self.store.is_complete(index):
            record = self.store.record(index)
            self.report.add_block(record, reused=True)
            return record
        inputs = self._inputs(index) if self.needs_data else None
        dense_inputs = self._dense_inputs(index) if self.needs_data and self.options.dense_stream else None
        method = self._block_method(index)  # before the block is loaded: OWL's dense pass loads and releases them all
        started = time.perf_counter()
        block = self.access.load_block(index)
        self.report.io_seconds += time.perf_counter() - started
        last = index == self.num_blocks - 1
        outputs = (self._new_activations(self.store.outputs_directory(index) if self.store else None)
                   if inputs is not None and not last else None)
        dense = None
        if dense_inputs is not None:  # the last block's dense outputs are only reconstruction targets
            kept = self.store is not None and not last
            dense = DenseStream(dense_inputs, self._new_activations(
                cast(BlockStore, self.store).dense_outputs_directory(index) if kept else None))
        prefix = block_prefix(self.adapter, index)
        result = self.pruner(block, index, inputs, self._calls[index] if self._calls else [], outputs, dense, method)
        parameters, removed = linear_counts(block, self.adapter, result.factors)
        record = BlockRecord(index=index, layers=[vars(layer) for layer in result.layers],
                             linear_parameters=parameters, linear_removed=removed,
                             removed_groups=self._removed_groups(block), forward_seconds=result.forward_seconds,
                             reconstruction=result.reconstruction)
        started = time.perf_counter()
        if self.store is not None:
            self.store.save(record, block_state(block, prefix), result.factors, outputs)
        else:
            self.report.factors.update({f"{prefix}.{name}": term for name, term in result.factors.items()})
        self.access.release_block(index)
        self.report.io_seconds += time.perf_counter() - started
        self.report.add_block(record, reused=False)
        if inputs is not None:  # the previous block's outputs (or the embeddings) are no longer needed
            inputs.delete()
        if dense is not None:
            dense.inputs.delete()
            if last:
                dense.outputs.delete()
        self._latest = (index, outputs) if outputs is not None else None
        self._dense_latest = (index, dense.outputs) if dense is not None and not last else None
        release_free_memory()
        return record

    def _block_method(self, index: int) -> MethodConfig | None:
        """The method with block `index`'s sparsity under the layer budget (None without one)."""
        if self.options.budget is None:
            return None
        if self._block_sparsity is None:
            self._block_sparsity = self._budget_sparsities()
            self.report.block_sparsity = self._block_sparsity
        return cast(MethodConfig, self.method.model_copy(update={"sparsity": self._block_sparsity[index]}))

    def _budget_sparsities(self) -> list[float]:
        """Every block's sparsity: from the store when a previous run of this key computed them, else from OWL's
        dense pass over all blocks (or the ramp's formula), then kept in the store."""
        budget = cast(LayerBudget, self.options.budget)
        saved = self.store.directory / "block_sparsity.json" if self.store is not None else None
        if saved is not None and saved.is_file():
            return cast(list[float], json.loads(saved.read_text()))
        ratios = self._outlier_ratios(budget.owl_threshold) if budget.kind == "owl" else None
        first = self.adapter.blocks(self.access.model)[0]  # on the meta device when streamed: shapes only
        widths = tuple(self.adapter.read_weight(first.get_submodule(name)).shape[1]
                       for name in self.adapter.linear_names)
        sparsities = block_sparsities(budget, self.method.target_sparsity, ratios, self.num_blocks, widths)
        if saved is not None:
            write_json(saved, sparsities)
        return sparsities

    def _outlier_ratios(self, threshold: float) -> list[float]:
        """OWL's outlier ratio of every block, from one pass of the dense model over the calibration set."""
        hidden = self._capture()
        ratios = []
        calls = cast(list[list[BlockCall]], self._calls)
        for index in range(self.num_blocks):
            block = self.access.load_block(index)
            working = self.pruner.working_copy(block)
            device_calls = self.pruner.device_calls(calls[index])
            groups = list(self.adapter.linear_groups)
            started = time.perf_counter()
            statistics = collect_input_statistics(working, groups, hidden, device_calls, self.options,
                                                  self.adapter.input_producers)
            by_linear = {name: statistics[group] for group in groups for name in group}
            ratios.append(outlier_ratio(
                {name: self.adapter.read_weight(working.get_submodule(name)) for name in by_linear},
                {name: torch.diagonal(entry.gram).sqrt() for name, entry in by_linear.items()}, threshold))
            if index < self.num_blocks - 1:
                outputs = self._new_activations(None)
                self.pruner.propagate(working, hidden, device_calls, outputs)
                hidden.delete()
                hidden = outputs
            self.report.forward_seconds += time.perf_counter() - started
            self.access.release_block(index)
        hidden.delete()
        return ratios

    def _removed_groups(self, block: nn.Module) -> dict[str, int]:
        """Structured methods: how many column groups each pruned unit kind lost in this block."""
        if not self.pruner.units:
            return {}
        layout = cast(HeadLayout, self.pruner.layout)
        return {unit.kind: int(removed_groups(block, self.adapter, unit,
                                              unit_groups(block, self.adapter, unit, layout)).numel())
                for unit in self.adapter.structured_units}

    def _capture(self) -> ActivationSet:
        """Block 0's inputs and every block's call arguments, from one embeddings-only pass."""
        started = time.perf_counter()
        self.access.load_stem()
        try:
            hidden, self._calls = capture_block_inputs(
                self.access.model, self.adapter, cast(torch.Tensor, self.input_ids), self.options.batch_size,
                self._new_activations(None), self.options.forward_dtype)
        finally:
            self.access.release_stem()
        self.report.capture_seconds += time.perf_counter() - started
        return hidden

    def _inputs(self, index: int) -> ActivationSet:
        """Block `index`'s inputs: the previous block's outputs from memory or the store; else recomputed from the
        latest stored outputs (or the embeddings) by re-running the finished blocks in between."""
        if self._latest is not None and self._latest[0] == index - 1:
            return self._latest[1]
        store = self.store
        start = -1
        if store is not None:
            start = next((previous for previous in range(index - 1, -1, -1) if store.has_outputs(previous)), -1)
        embedded = self._capture() if self._calls is None or start < 0 else None
        if start < 0:
            hidden = cast(ActivationSet, embedded)
        else:
            if embedded is not None:  # only the call arguments were needed
                embedded.delete()
            hidden = cast(BlockStore, store).outputs(start, self.report.activations_in_memory,
                                                     self.activation_device)
        for replayed in range(start + 1, index):
            replayed_outputs = self._replay(replayed, hidden)
            hidden.delete()
            hidden = replayed_outputs
        return hidden

    def _dense_inputs(self, index: int) -> ActivationSet:
        """Block `index`'s inputs in the dense model: the previous block's dense outputs from memory or the store;
        else recomputed from the latest stored ones (or the embeddings) by running the original blocks in between
        (the model access serves original weights for every block not pruned by this process)."""
        if self._dense_latest is not None and self._dense_latest[0] == index - 1:
            return self._dense_latest[1]
        store = self.store
        start = -1
        if store is not None:
            start = next((previous for previous in range(index - 1, -1, -1)
                          if store.has_dense_outputs(previous)), -1)
        if start < 0:
            hidden = self._capture()
        else:
            hidden = ActivationSet.from_directory(cast(BlockStore, store).dense_outputs_directory(start),
                                                  self.report.activations_in_memory, self.activation_device)
        for replayed in range(start + 1, index):
            replayed_outputs = self._replay(replayed, hidden, original=True)
            hidden.delete()
            hidden = replayed_outputs
        return hidden

    def _replay(self, index: int, hidden: ActivationSet, original: bool = False) -> ActivationSet:
        """The outputs of finished block `index` on `hidden`: with its stored (pruned) weights, or its original
        weights (the dense stream)."""
        store = cast(BlockStore, self.store)
        block = self.access.load_block(index)
        if not original:
            store.load_weights(index, block, block_prefix(self.adapter, index))
        outputs = self._new_activations(None if original else store.outputs_directory(index))
        started = time.perf_counter()
        self.pruner.propagate(self.pruner.working_copy(block), hidden,
                              self.pruner.device_calls(cast(list[list[BlockCall]], self._calls)[index]), outputs)
        self.report.forward_seconds += time.perf_counter() - started
        self.access.release_block(index)
        return outputs


def prune_model(model: nn.Module, input_ids: torch.Tensor | None, method: MethodConfig,
                options: EngineOptions = EngineOptions()) -> PruneReport:
    """Prune every decoder-block linear of a model held in memory (on the CPU), in place; return the report."""
    return PruneEngine(InMemoryModel(model), method, options, input_ids).run()
