"""Block reconstruction: after a block's linears are pruned, a few optimizer steps on their kept weights (masks
fixed) so that the pruned block, run on the pruned model's inputs, reproduces the dense block's outputs:
  min_Ŵ Σ_b ‖f(X_b; Ŵ) − f(X_dense,b; W)‖²   subject to Ŵ_ij = 0 where the mask removed w_ij,
with Adam on the calibration windows and early stopping on held-out windows (the weights of the best held-out loss
are kept; when no epoch beats the one-shot solution, the block stays as the method left it).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import cast

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from pruning.blocks.activations import ActivationSet
from pruning.blocks.calls import BlockCall, move, run_block
from pruning.methods.base import MAX_ROUNDS, MAX_SEED

Batches = ActivationSet | Sequence[torch.Tensor]


class ReconstructionConfig(BaseModel):
    """`epochs` over the training windows at most; `holdout` is the share of calibration batches kept for early
    stopping (at least one batch); `micro_batch` is the number of sequences per optimizer step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(default=4, gt=0, le=MAX_ROUNDS)
    learning_rate: float = Field(default=1e-4, gt=0)
    holdout: float = Field(default=0.125, gt=0, lt=1)
    micro_batch: PositiveInt = 2
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


def _loss(block: nn.Module, inputs: torch.Tensor, call: BlockCall, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the block's outputs against the dense block's."""
    return torch.nn.functional.mse_loss(run_block(block, inputs, call), targets)


def _slice_call(call: BlockCall, start: int, stop: int, batch: int) -> BlockCall:
    """The call arguments of sequences start..stop of a batch (tensors whose first dimension is the batch)."""
    def cut(value: object) -> object:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
            return value[start:stop]
        if isinstance(value, tuple):
            return tuple(cut(item) for item in value)
        if isinstance(value, list):
            return [cut(item) for item in value]
        if isinstance(value, dict):
            return {key: cut(item) for key, item in value.items()}
        return value
    return BlockCall(tuple(cut(arg) for arg in call.args), dict(cut(call.kwargs)))  # type: ignore[call-overload]


class _Windows:
    """The calibration batches cut into micro-batches, in fp32 on the training device."""

    def __init__(self, inputs: Batches, targets: Batches, calls: Sequence[BlockCall],
                 indices: Sequence[int], micro_batch: int, device: torch.device) -> None:
        self.items: list[tuple[torch.Tensor, BlockCall, torch.Tensor]] = []
        for index in indices:
            batch, target = inputs[index], targets[index]
            call = BlockCall(move(calls[index].args, device, torch.float32),
                             move(calls[index].kwargs, device, torch.float32))
            for start in range(0, batch.shape[0], micro_batch):
                stop = min(start + micro_batch, batch.shape[0])
                self.items.append((batch[start:stop].to(device, torch.float32),
                                   _slice_call(call, start, stop, batch.shape[0]),
                                   target[start:stop].to(device, torch.float32)))

    def loss(self, block: nn.Module) -> float:
        with torch.no_grad():
            total = sum(float(_loss(block, inputs, call, target)) * inputs.shape[0]
                        for inputs, call, target in self.items)
        return total / max(sum(inputs.shape[0] for inputs, _, _ in self.items), 1)


def reconstruct_block(block: nn.Module, linear_names: Sequence[str], inputs: Batches,
                      calls: Sequence[BlockCall], targets: Batches,
                      config: ReconstructionConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Optimise the kept weights of `linear_names` in a fp32 copy of `block` (see the module docstring).

    `inputs[b]` are the pruned model's inputs of batch b, `targets[b]` the dense block's outputs on the dense
    model's inputs. Returns the new weights by linear name and a record of losses (before / after, per token and
    dimension, on the training and held-out windows), epochs run and seconds."""
    started = time.perf_counter()
    device = next(block.parameters()).device
    trainee = copy.deepcopy(block).to(torch.float32)
    trainee.requires_grad_(False)
    weights = {name: cast(torch.Tensor, trainee.get_submodule(name).weight) for name in linear_names}
    masks = {name: weight.detach() != 0 for name, weight in weights.items()}
    for weight in weights.values():
        weight.requires_grad_(True)
    held_out = max(1, round(len(inputs) * config.holdout))
    if held_out >= len(inputs):
        raise ValueError("block reconstruction needs at least two calibration batches (one is held out)")
    training = _Windows(inputs, targets, calls, range(len(inputs) - held_out), config.micro_batch, device)
    holdout = _Windows(inputs, targets, calls, range(len(inputs) - held_out, len(inputs)), config.micro_batch, device)
    optimizer = torch.optim.Adam(list(weights.values()), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    best_loss = holdout.loss(trainee)
    record = {"train_loss_before": training.loss(trainee), "holdout_loss_before": best_loss}
    best = {name: weight.detach().clone() for name, weight in weights.items()}
    epochs_run = 0
    for _ in range(config.epochs):
        for position in torch.randperm(len(training.items), generator=generator).tolist():
            batch, call, target = training.items[position]
            optimizer.zero_grad(set_to_none=True)
            _loss(trainee, batch, call, target).backward()
            optimizer.step()
            with torch.no_grad():
                for name, weight in weights.items():
                    weight.mul_(masks[name])
        epochs_run += 1
        loss = holdout.loss(trainee)
        if loss >= best_loss:
            break
        best_loss = loss
        best = {name: weight.detach().clone() for name, weight in weights.items()}
    with torch.no_grad():
        for name, weight in weights.items():
            weight.copy_(best[name])
    record.update(train_loss_after=training.loss(trainee), holdout_loss_after=best_loss, epochs=float(epochs_run),
                  seconds=time.perf_counter() - started)
    return best, record
