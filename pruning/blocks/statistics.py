"""Input statistics of a block's linears: hooks that see each group's input during one forward over the calibration
batches and accumulate Σxxᵀ in fp32, stopping the forward as soon as the stage's last group has seen its input."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import nn

from pruning.blocks.activations import ActivationSet
from pruning.blocks.calls import BlockCall, StopForward, run_block
from pruning.methods.base import InputStatistics, PairedInputStatistics

Group = tuple[str, ...]  # linears that share one input, by name inside the block


def collect_input_statistics(
        block: nn.Module, stage: list[Group], hidden: ActivationSet | list[torch.Tensor], calls: list[BlockCall],
        device: torch.device, dtype: torch.dtype, input_producers: tuple[tuple[str, str], ...] = (),
        dense: tuple[nn.Module, ActivationSet] | None = None) -> dict[Group, InputStatistics]:
    """Σxxᵀ (fp32) of the inputs of each group in `stage`, one forward over all batches.

    With `dense` (the block's original weights and the dense model's inputs to it), each batch first runs
    through the dense block and the statistics also hold Σ x_dense xᵀ (`PairedInputStatistics`).
    """
    statistics: dict[Group, InputStatistics] = {}
    dense_inputs: dict[Group, torch.Tensor] = {}

    def accumulate(group: Group, activations: torch.Tensor) -> None:
        if group not in statistics:
            kind = PairedInputStatistics if dense is not None else InputStatistics
            statistics[group] = kind(activations.shape[-1], activations.device)
        entry = statistics[group]
        if isinstance(entry, PairedInputStatistics):
            entry.add_pair(activations, dense_inputs.pop(group))
        else:
            entry.add(activations)

    def keep_dense(group: Group, activations: torch.Tensor) -> None:
        dense_inputs[group] = activations

    def forward(module: nn.Module, batch: torch.Tensor, call: BlockCall,
                on_input: Callable[[Group, torch.Tensor], None]) -> None:
        with stage_inputs(module, stage, input_producers, on_input), contextlib.suppress(StopForward):
            run_block(module, batch.to(device, dtype), call)

    with torch.no_grad():
        for index, (batch, call) in enumerate(zip(hidden, calls, strict=True)):
            if dense is not None:
                forward(dense[0], dense[1][index], call, keep_dense)
            forward(block, batch, call, accumulate)
    return statistics


@contextlib.contextmanager
def stage_inputs(block: nn.Module, stage: list[Group], input_producers: tuple[tuple[str, str], ...],
                 on_input: Callable[[Group, torch.Tensor], None]) -> Iterator[None]:
    """Hooks that pass each group's input to `on_input(group, x)`; the forward stops (StopForward) once the stage's
    last group has seen its input. A group whose first linear is never called as a module reads its input from
    its producer's output (see `ArchitectureAdapter`)."""
    last_group = stage[-1]

    def hook_for(group: Group) -> Callable[..., None]:
        def seen(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            on_input(group, inputs[0])
            if group == last_group:
                raise StopForward
        return seen

    def producer_hook_for(group: Group) -> Callable[..., None]:
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
