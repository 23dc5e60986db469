"""A layer budget over a run: each block's sparsity, from OWL's outlier ratios (one pass of the dense model over the
calibration set, block by block) or the depth ramp's formula, computed once and kept in the block store (see
`pruning.blocks.budgets` for the formulas)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch

from pruning.blocks.activations import ActivationSet
from pruning.blocks.budgets import LayerBudget, block_sparsities, outlier_ratio
from pruning.blocks.calls import BlockCall
from pruning.blocks.pruner import BlockPruner
from pruning.blocks.statistics import collect_input_statistics
from pruning.io import write_json
from pruning.models.access import ModelAccess


def run_block_sparsities(budget: LayerBudget, target: float, access: ModelAccess, saved: Path | None,
                         outlier_ratios: Callable[[], list[float]]) -> list[float]:
    """Every block's sparsity: from `saved` when a previous run of the same key computed them, else from
    `outlier_ratios()` (OWL) or the ramp, then saved."""
    if saved is not None and saved.is_file():
        return cast(list[float], json.loads(saved.read_text()))
    ratios = outlier_ratios() if budget.kind == "owl" else None
    first = access.adapter.blocks(access.model)[0]  # on the meta device when streamed: shapes only
    widths = tuple(access.adapter.read_weight(first.get_submodule(name)).shape[1]
                   for name in access.adapter.linear_names)
    sparsities = block_sparsities(budget, target, ratios, access.num_blocks, widths)
    if saved is not None:
        write_json(saved, sparsities)
    return sparsities


def owl_outlier_ratios(access: ModelAccess, pruner: BlockPruner, hidden: ActivationSet,
                       calls: list[list[BlockCall]], threshold: float,
                       new_set: Callable[[], ActivationSet]) -> tuple[list[float], float]:
    """(OWL's outlier ratio of every block, the seconds its forwards took): the dense model block by block on the
    calibration set, whose block-0 inputs `hidden` are consumed."""
    adapter, ratios, seconds = access.adapter, [], 0.0
    groups = list(adapter.linear_groups)
    for index in range(access.num_blocks):
        working = pruner.working_copy(access.load_block(index))
        device_calls = pruner.device_calls(calls[index])
        started = time.perf_counter()
        statistics = collect_input_statistics(working, groups, hidden, device_calls, pruner.device, pruner.dtype,
                                              adapter.input_producers)
        by_linear = {name: statistics[group] for group in groups for name in group}
        ratios.append(outlier_ratio(
            {name: adapter.read_weight(working.get_submodule(name)) for name in by_linear},
            {name: torch.diagonal(entry.gram).sqrt() for name, entry in by_linear.items()}, threshold))
        if index < access.num_blocks - 1:
            outputs = new_set()
            pruner.propagate(working, hidden, device_calls, outputs)
            hidden.delete()
            hidden = outputs
        seconds += time.perf_counter() - started
        access.release_block(index)
    hidden.delete()
    return ratios, seconds
