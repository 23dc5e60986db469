"""Running a decoder block on its own: the arguments the model calls it with, and the embeddings-only pass that
records them.

`capture_block_inputs` replaces every decoder block with a pass-through catcher that records the exact
arguments the model calls it with (attention masks per layer type, rotary tables, ...) and keeps block 0's
hidden states; no block is computed, and the forward stops at the last catcher. With them any block of any
supported family runs in isolation (`run_block`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning.blocks.activations import ActivationSet
from pruning.models.architectures import ArchitectureAdapter


@dataclass(frozen=True)
class BlockCall:
    """The arguments, other than the hidden states, that the model passes to one block."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class StopForward(Exception):
    """Raised inside a forward pass once everything needed from it has been seen."""


class _ArgumentCatcher(nn.Module):
    """Stands in for a decoder block during the capture pass: records its call, passes hidden states on."""

    def __init__(self, calls: list[BlockCall], keep_hidden: Callable[[torch.Tensor], None] | None,
                 last: bool) -> None:
        super().__init__()
        self.calls = calls
        self.keep_hidden = keep_hidden
        self.last = last

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls.append(BlockCall(args, kwargs))
        if self.keep_hidden is not None:
            self.keep_hidden(hidden_states.detach())
        if self.last:
            raise StopForward
        return hidden_states


@contextlib.contextmanager
def blocks_replaced(model: nn.Module, adapter: ArchitectureAdapter,
                    replacements: Sequence[nn.Module]) -> Iterator[None]:
    """Temporarily put `replacements` in place of the model's decoder blocks."""
    blocks = adapter.blocks(model)
    originals = list(blocks)
    for index, replacement in enumerate(replacements):
        blocks[index] = replacement
    try:
        yield
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block


def capture_block_inputs(model: nn.Module, adapter: ArchitectureAdapter, inputs: torch.Tensor, batch_size: int,
                         hidden: ActivationSet | None = None,
                         dtype: torch.dtype | None = None) -> tuple[ActivationSet, list[list[BlockCall]]]:
    """Run the embeddings once on `inputs` (token ids, or pixel values for a vision model); return block 0's hidden
    states per batch (in `dtype` when given, appended to `hidden` when given) and every block's call arguments."""
    hidden = hidden if hidden is not None else ActivationSet()
    num_blocks = len(adapter.blocks(model))
    calls: list[list[BlockCall]] = [[] for _ in range(num_blocks)]

    def keep(states: torch.Tensor) -> None:
        hidden.append(states if dtype is None else states.to(dtype))

    options = {"use_cache": False} if adapter.modality == "text" else {}
    catchers: list[nn.Module] = [_ArgumentCatcher(calls[index], keep if index == 0 else None,
                                                  last=index == num_blocks - 1) for index in range(num_blocks)]
    with blocks_replaced(model, adapter, catchers), torch.no_grad():
        for batch in inputs.split(batch_size):
            with contextlib.suppress(StopForward):
                model(**{adapter.input_name: batch}, **options)
    return hidden, calls


def move(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested in tuples, lists, dicts) to `device`; floating tensors also to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(move(item, device, dtype) for item in value)
    if isinstance(value, dict):
        return {key: move(item, device, dtype) for key, item in value.items()}
    return value


def on_device(block: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The block itself when it is already on `device` in `dtype`, else a copy that is."""
    parameter = next(block.parameters())
    if parameter.device == device and parameter.dtype == dtype:
        return block
    return copy.deepcopy(block).to(device=device, dtype=dtype)


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    output = block(hidden, *call.args, **call.kwargs)
    return output[0] if isinstance(output, tuple) else output
