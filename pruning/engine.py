"""The layer-wise engine: walks a model (a causal LM, or a vision transformer's encoder) block by block with
calibration data: token windows (N, L), or images (N, C, H, W) as the model's image processor makes them.

1. One embeddings-only pass: every decoder block is replaced by a pass-through catcher that records the exact
   arguments the model calls it with, and block 0's catcher keeps the hidden states (`pruning.blocks.calls`).
2. For each block: the block is loaded (from disk, when the model is streamed) and pruned in place by the
   `BlockPruner` (statistics forwards, one solve per linear, the forward that gives the next block its inputs);
   then it is written to the block store and released. Only one block and the activations are in memory at any
   time; activations past the memory budget live in files (`pruning.blocks.memory`).

With `targets: dense` or a block reconstruction, a second `ActivationStream` runs beside the pruned one: the dense
model's activations, each block's original weights on the dense inputs. Data-free methods skip the calibration
passes altogether. With a `BlockStore`, every finished block is kept on disk under a key of everything that
determines it, so a second run reuses it and a killed run resumes at the first unfinished block.

    with PruneEngine(StreamedModel(directory), method, config, machine, inputs, store) as engine:
        report = engine.run()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from pruning.blocks.activations import ActivationSet, release_free_memory
from pruning.blocks.calls import BlockCall, capture_block_inputs
from pruning.blocks.memory import MemoryPlan
from pruning.blocks.owl import owl_outlier_ratios, run_block_sparsities
from pruning.blocks.pruner import BlockPruner, DenseStream, linear_counts
from pruning.blocks.report import BlockRecord, EngineReport
from pruning.blocks.store import BlockStore
from pruning.blocks.stream import ActivationStream, StreamKind
from pruning.config import EngineConfig
from pruning.errors import ConfigError
from pruning.machine import Machine
from pruning.methods.base import SparseLowRank
from pruning.methods.registry import MethodConfig, needs_calibration
from pruning.models.access import InMemoryModel, ModelAccess, block_prefix, block_state
from pruning.models.architectures import HeadLayout
from pruning.models.shrink import removed_groups, structured_layout, unit_groups


class PruneEngine:
    """Prunes a model block by block (see the module docstring); one object serves every driver.

    `run()` prunes all blocks; `prune_block(i)` makes sure block i is finished, computing it from the previous
    block's outputs (held in memory, or in the store), and returns its record. `close()` (or leaving the `with`
    block) drops the captured call arguments and activations and this process's scratch files.
    """

    def __init__(self, access: ModelAccess, method: MethodConfig, config: EngineConfig | None = None,
                 machine: Machine | None = None, inputs: torch.Tensor | None = None,
                 store: BlockStore | None = None) -> None:
        self.access, self.method, self.store = access, method, store
        self.config = config = config or EngineConfig()
        self.machine = machine or Machine.resolve(config.device, config.forward_dtype)
        self.adapter = access.adapter
        self.needs_data = needs_calibration(method)
        if self.needs_data and inputs is None:
            raise ValueError(f"{method.method} needs calibration data")
        if config.dense_stream and not self.needs_data:
            raise ConfigError(f"engine.targets / engine.reconstruction: {method.method} is data-free; dense "
                              "targets and block reconstruction need a calibration-based method")
        self.inputs = inputs
        model_config = cast(Any, access.model).config
        device, dtype = self.machine.torch_device, self.machine.torch_dtype
        self.pruner = BlockPruner(self.adapter, method, structured_layout(self.adapter, method, model_config),
                                  device, dtype, true_sequential=config.true_sequential,
                                  skip_layers=config.skip_layers, dense_targets=config.targets == "dense",
                                  reconstruction=config.reconstruction)
        budget = int(config.memory_budget) if config.memory_budget is not None else None
        self.memory = MemoryPlan.choose(
            self.adapter.sequence_shape(model_config, inputs) if inputs is not None else None, config.batch_size,
            int(model_config.get_text_config().hidden_size), dtype, device, config.dense_stream, budget,
            store.scratch_folder if store is not None else None)
        self.pruner.reuse_outputs = self.memory.reuse_outputs
        self.report = EngineReport(activations_in_memory=self.memory.in_memory)
        self.factors: dict[str, SparseLowRank] = {}  # sparse + low-rank terms by full linear name, without a store
        self.streams = {kind: ActivationStream(kind, store, self.memory, self, config.persist_activations)
                        for kind in ("pruned", "dense")}
        self._calls: list[list[BlockCall]] | None = None
        self._block_sparsity: list[float] | None = None

    def __enter__(self) -> PruneEngine:
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()

    @property
    def num_blocks(self) -> int:
        return self.access.num_blocks

    def close(self) -> None:
        """Drop the captured block arguments and activations and remove this process's scratch files (finished
        blocks stay in the store)."""
        for stream in self.streams.values():
            stream.close()
        self._calls = None
        if self.store is not None:
            self.store.close()
        release_free_memory()

    def run(self, on_block: Callable[[int], None] | None = None) -> EngineReport:
        """Prune every block (reusing finished ones from the store), calling `on_block(i)` after each; return the
        report over all blocks."""
        for index in range(self.num_blocks):
            self.prune_block(index)
            if on_block is not None:
                on_block(index)
        return self.report

    def prune_block(self, index: int) -> BlockRecord:
        if self.store is not None and self.store.is_complete(index):
            record = self.store.record(index)
            self.report.add_block(record, reused=True)
            if self.config.budget is not None and self.store.block_sparsity_path.is_file():
                self._block_method(index)  # the record lists every block's budget, computed or reused
            return record
        pruned, dense_stream = self.streams["pruned"], self.streams["dense"]
        inputs = pruned.inputs(index) if self.needs_data else None
        dense_inputs = dense_stream.inputs(index) if self.needs_data and self.config.dense_stream else None
        method = self._block_method(index)  # before the block is loaded: OWL's dense pass loads and releases them all
        started = time.perf_counter()
        block = self.access.load_block(index)
        self.report.io_seconds += time.perf_counter() - started
        last = index == self.num_blocks - 1
        outputs = pruned.outputs_for(index, keep=True) if inputs is not None and not last else None
        # The last block's dense outputs are only its reconstruction targets: they are not kept.
        dense = (DenseStream(dense_inputs, dense_stream.outputs_for(index, keep=not last))
                 if dense_inputs is not None else None)
        result = self.pruner(block, index, inputs, self._calls[index] if self._calls else [], outputs, dense, method)
        parameters, removed = linear_counts(block, self.adapter, result.factors)
        record = BlockRecord(index=index, layers=result.layers, linear_parameters=parameters,
                             linear_removed=removed, removed_groups=self._removed_groups(block),
                             forward_seconds=result.forward_seconds, reconstruction=result.reconstruction)
        started = time.perf_counter()
        prefix = block_prefix(self.adapter, index)
        if self.store is not None:
            self.store.save(record, block_state(block, prefix), result.factors,
                            outputs if self.config.persist_activations else None)
        else:
            self.factors.update({f"{prefix}.{name}": term for name, term in result.factors.items()})
        self.access.release_block(index)
        self.report.io_seconds += time.perf_counter() - started
        self.report.add_block(record, reused=False)
        if inputs is not None:  # the previous block's outputs (or the embeddings) are no longer needed
            pruned.advance(index, inputs, outputs)
        if dense is not None:
            if last:
                dense.outputs.delete()
            dense_stream.advance(index, dense.inputs, None if last else dense.outputs)
        release_free_memory()
        return record

    def capture(self) -> ActivationSet:
        """Block 0's inputs and every block's call arguments, from one embeddings-only pass."""
        started = time.perf_counter()
        self.access.load_stem()
        try:
            hidden, self._calls = capture_block_inputs(
                self.access.model, self.adapter, cast(torch.Tensor, self.inputs), self.config.batch_size,
                self.memory.new_set(None), self.machine.torch_dtype)
        finally:
            self.access.release_stem()
        self.report.capture_seconds += time.perf_counter() - started
        return hidden

    def ensure_calls(self) -> None:
        if self._calls is None:
            self.capture().delete()  # only the call arguments were needed

    def replay(self, index: int, hidden: ActivationSet, stream: StreamKind) -> ActivationSet:
        """The outputs of finished block `index` on `hidden`: with its stored (pruned) weights, or its original
        weights (the dense stream; the model access serves them for every block this process did not prune)."""
        store = cast(BlockStore, self.store)
        block = self.access.load_block(index)
        if stream == "pruned":
            store.load_weights(index, block, block_prefix(self.adapter, index))
        outputs = self.memory.new_set(store.stream_directory(index, "pruned") if stream == "pruned" else None)
        started = time.perf_counter()
        self.pruner.propagate(self.pruner.working_copy(block), hidden,
                              self.pruner.device_calls(cast(list[list[BlockCall]], self._calls)[index]), outputs)
        self.report.forward_seconds += time.perf_counter() - started
        self.access.release_block(index)
        return outputs

    def _block_method(self, index: int) -> MethodConfig | None:
        """The method with block `index`'s sparsity under the layer budget (None without one)."""
        budget = self.config.budget
        if budget is None:
            return None
        if self._block_sparsity is None:
            saved = self.store.block_sparsity_path if self.store is not None else None
            self._block_sparsity = run_block_sparsities(budget, self.method.target_sparsity, self.access, saved,
                                                        self._outlier_ratios)
            self.report.block_sparsity = self._block_sparsity
        return cast(MethodConfig, self.method.model_copy(update={"sparsity": self._block_sparsity[index]}))

    def _outlier_ratios(self) -> list[float]:
        hidden = self.capture()
        ratios, seconds = owl_outlier_ratios(self.access, self.pruner, hidden, cast(list[list[BlockCall]], self._calls),
                                             cast(Any, self.config.budget).owl_threshold,
                                             lambda: self.memory.new_set(None))
        self.report.forward_seconds += seconds
        return ratios

    def _removed_groups(self, block: nn.Module) -> dict[str, int]:
        """Structured methods: how many column groups each pruned unit kind lost in this block."""
        if not self.pruner.units:
            return {}
        layout = cast(HeadLayout, self.pruner.layout)
        return {unit.kind: int(removed_groups(block, self.adapter, unit,
                                              unit_groups(block, self.adapter, unit, layout)).numel())
                for unit in self.adapter.structured_units}


def prune_model(model: nn.Module, inputs: torch.Tensor | None, method: MethodConfig,
                config: EngineConfig | None = None) -> EngineReport:
    """Prune every block linear of a model held in memory (on the CPU), in place, calibrated on `inputs` (token
    windows, or pixel values for a vision model); return the report. (A `PruneEngine` over `InMemoryModel(model)`
    also keeps sparse + low-rank terms, in its `factors`.)"""
    with PruneEngine(InMemoryModel(model), method, config, inputs=inputs) as engine:
        return engine.run()
