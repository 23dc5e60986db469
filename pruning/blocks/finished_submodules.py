"""Outputs of a block's finished sub-modules, computed once and reused by the block's later forward passes.

A true-sequential block runs its forward once per stage and once more for its outputs. Once every linear
of a direct child of the block (Llama's `self_attn`, say) is solved, and every linear computed before it
too, that child's output on each calibration batch no longer changes: the next pass records it, and the
passes after that put a stand-in in the child's place that returns the recorded outputs instead of
recomputing them. The results are bit-identical; the attention of a Llama block is computed 2 times fewer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from pruning.models.architectures import ArchitectureAdapter


def finished_children(adapter: ArchitectureAdapter, remaining: list[str]) -> list[str]:
    """Direct children of a block whose linears, and every linear computed before them, are all solved, given
    the linears still to solve (`remaining`, names inside the block). Block-level linears form no child."""
    order = {name: position for position, name in enumerate(adapter.linear_names)}
    first_remaining = min((order[name] for name in remaining), default=len(order))
    children: dict[str, int] = {}
    for name in adapter.linear_names:
        child, separator, _ = name.partition(".")
        if separator:
            children[child] = max(children.get(child, -1), order[name])
    return [child for child, last in children.items() if last < first_remaining]


class _RecordedOutputs(nn.Module):
    """Stands in for a finished child: returns its recorded outputs, one per call, in batch order (dropping each
    once returned when the pass is the last one)."""

    def __init__(self, outputs: list[Any], consume: bool) -> None:
        super().__init__()
        self.outputs = outputs
        self.consume = consume
        self.calls = 0

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        output = self.outputs[self.calls]
        if self.consume:
            self.outputs[self.calls] = None
        self.calls += 1
        return output


@contextlib.contextmanager
def reusing(block: nn.Module, recorded: dict[str, list[Any]], consume: bool = False) -> Iterator[None]:
    """Within the context, the recorded children of `block` return their recorded outputs; with `consume` (the
    block's last pass) each output is dropped once returned."""
    originals = {child: block.get_submodule(child) for child in recorded}
    for child, outputs in recorded.items():
        setattr(block, child, _RecordedOutputs(outputs, consume))
    try:
        yield
    finally:
        for child, module in originals.items():
            setattr(block, child, module)


@contextlib.contextmanager
def recording(block: nn.Module, children: list[str], batches: int) -> Iterator[dict[str, list[Any]]]:
    """Record the outputs of `children` over the passes run within the context; on exit the dictionary holds the
    children whose output was recorded for all `batches` batches (a pass stopped early may not reach them)."""
    recorded: dict[str, list[Any]] = {child: [] for child in children}
    handles = [block.get_submodule(child).register_forward_hook(
        lambda _module, _inputs, output, child=child: recorded[child].append(output)) for child in children]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
        for child in children:
            if len(recorded[child]) != batches:
                del recorded[child]
