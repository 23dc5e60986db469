"""Token-level perplexity with the SparseGPT/Wanda protocol, recorded with the result.

Protocol "token-ppl": the evaluation documents are joined with "\\n\\n" and tokenized once without
special tokens; the stream is cut into consecutive non-overlapping windows of `seqlen` tokens (the
first `max_windows` of them); each window is scored on its own, and
  ppl = exp( Σ_windows Σ_{t=2..L} −log p(x_t | x_<t) / (windows · (L − 1)) ).

The model is run block by block like the pruning engine (so a model larger than memory is evaluated
with one block loaded), in fp32, and the output head is applied to a bounded number of tokens at a time:
full-vocabulary logits are never materialized for a whole batch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as functional
from pydantic import BaseModel, ConfigDict
from torch import nn

from pruning.blocks.activations import ActivationSet, activation_bytes, default_memory_budget, release_free_memory
from pruning.blocks.calls import BlockCall, blocks_replaced, capture_block_inputs, move, on_device, run_block
from pruning.data.corpora import TextProvenance
from pruning.errors import ConfigError
from pruning.models.access import InMemoryModel, ModelAccess

EVALUATION_DTYPE = torch.float32
HEAD_CHUNK_ELEMENTS = 1 << 21  # logits per head chunk: 8 MB in fp32 (and as much again for the log-softmax)


class PerplexitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str  # the short label of `dataset_label`
    seqlen: int
    max_windows: int | None
    dtype: str


class PerplexityResult(BaseModel):
    """A perplexity with its protocol (dataset, window length and count) and the evaluation text's provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    perplexity: float
    mean_nll: float
    windows: int
    scored_tokens: int
    protocol: str
    settings: PerplexitySettings
    provenance: TextProvenance | None = None


def dataset_label(dataset: str) -> str:
    """A short, machine-independent name: named sources as they are, local paths by their last two parts."""
    parts = Path(dataset).parts
    return dataset if len(parts) <= 1 else "/".join(parts[-2:])


def protocol_name(dataset: str, seqlen: int, windows: int) -> str:
    return f"token-ppl[{dataset_label(dataset)}|seqlen={seqlen}|windows={windows}|join=\\n\\n|no-special-tokens]"


class _Replay(nn.Module):
    """Stands in for a decoder block when only the layers after the blocks are run: returns `output` when set,
    else its input."""

    def __init__(self) -> None:
        super().__init__()
        self.output: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states if self.output is None else self.output


def _head_nll(model: nn.Module, final: torch.Tensor, targets: torch.Tensor) -> float:
    """Σ −log p(target) over the (tokens, hidden) final states, a bounded number of tokens per head call.

    Gemma's logit soft-capping, logits = c·tanh(logits / c), is applied as its forward does."""
    head = cast(nn.Module, cast(Any, model).get_output_embeddings())
    cap = getattr(cast(Any, model).config.get_text_config(), "final_logit_softcapping", None)
    vocabulary = int(cast(torch.Tensor, head.weight).shape[0])
    chunk = max(1, HEAD_CHUNK_ELEMENTS // vocabulary)
    total = 0.0
    for start in range(0, final.shape[0], chunk):
        logits = head(final[start:start + chunk]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        total += float(functional.cross_entropy(logits, targets[start:start + chunk], reduction="sum"))
    return total


def perplexity(model: nn.Module | ModelAccess, tokens: torch.Tensor, seqlen: int, dataset: str,
               max_windows: int | None = None, batch_size: int = 8, device: torch.device | str = "cpu",
               memory_budget: int | None = None, scratch: Path | None = None) -> PerplexityResult:
    """Perplexity of a model (in memory, or streamed from disk) on the 1-D token stream `tokens` (see the
    module docstring). Hidden states that do not fit `memory_budget` go to files under `scratch`."""
    access = model if not isinstance(model, nn.Module) else InMemoryModel(model)
    device = torch.device(device)
    available = tokens.numel() // seqlen
    windows = available if max_windows is None else min(max_windows, available)
    if windows == 0:
        raise ConfigError(f"evaluation: the text holds {tokens.numel()} tokens, fewer than one window of {seqlen}")
    stream = tokens[: windows * seqlen].view(windows, seqlen)
    config = cast(Any, access.model).config
    size = activation_bytes(-(-windows // batch_size), batch_size, seqlen, int(config.get_text_config().hidden_size),
                            EVALUATION_DTYPE)
    in_memory = 2 * size <= (memory_budget if memory_budget is not None else default_memory_budget())
    if not in_memory and scratch is None:
        raise ValueError("evaluation: the hidden states do not fit the memory budget; give a scratch folder")

    def new_set(name: str) -> ActivationSet:
        return ActivationSet(None if in_memory else cast(Path, scratch) / name, in_memory=in_memory)

    access.load_stem()
    try:
        hidden, calls = capture_block_inputs(access.model, access.adapter, stream, batch_size, new_set("embedded"),
                                             EVALUATION_DTYPE)
    finally:
        access.release_stem()
    with torch.no_grad():
        for index in range(access.num_blocks):
            block = on_device(access.load_block(index), device, EVALUATION_DTYPE)
            outputs = new_set(f"block-{index}")
            for batch_index, call in enumerate(calls[index]):
                batch = hidden[batch_index].to(device)
                hidden.release(batch_index)  # inputs and outputs together take one set's memory
                device_call = BlockCall(move(call.args, device, EVALUATION_DTYPE),
                                        move(call.kwargs, device, EVALUATION_DTYPE))
                outputs.append(run_block(block, batch, device_call).cpu())
            access.release_block(index)
            hidden.delete()
            hidden = outputs
            release_free_memory()
        total_nll = _tail_nll(access, stream, hidden, batch_size, device)
    hidden.delete()
    scored = windows * (seqlen - 1)
    mean_nll = total_nll / scored
    return PerplexityResult(perplexity=math.exp(mean_nll), mean_nll=mean_nll, windows=windows, scored_tokens=scored,
                            protocol=protocol_name(dataset, seqlen, windows),
                            settings=PerplexitySettings(dataset=dataset_label(dataset), seqlen=seqlen,
                                                        max_windows=max_windows, dtype=str(EVALUATION_DTYPE)))


def _tail_nll(access: ModelAccess, stream: torch.Tensor, hidden: ActivationSet, batch_size: int,
              device: torch.device) -> float:
    """The layers after the blocks (final norm and friends, then the head) on the last block's outputs."""
    model = access.model
    replays = [_Replay() for _ in range(access.num_blocks)]
    access.load_stem()
    access.load_head()
    moved = {name: (parameter.device, parameter.dtype) for name, parameter in model.named_parameters()
             if parameter.device.type != "meta"}
    total = 0.0
    try:
        for name, parameter in model.named_parameters():
            if name in moved:
                parameter.data = parameter.data.to(device, EVALUATION_DTYPE)
        base = cast(nn.Module, cast(Any, model).base_model)
        with blocks_replaced(model, access.adapter, replays):
            for batch_index, batch in enumerate(stream.split(batch_size)):
                replays[-1].output = hidden[batch_index].to(device)
                hidden.release(batch_index)
                states = base(input_ids=batch.to(device), use_cache=False).last_hidden_state
                total += _head_nll(model, states[:, :-1].reshape(-1, states.shape[-1]),
                                   batch[:, 1:].reshape(-1).to(device))
    finally:
        for name, parameter in model.named_parameters():
            if name in moved:
                parameter.data = parameter.data.to(*moved[name])
        access.release_head()
        access.release_stem()
    return total
