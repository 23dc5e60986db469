"""Token-level perplexity with the SparseGPT/Wanda protocol, recorded with the result.

Protocol "token-ppl": the evaluation documents are joined with "\\n\\n" and tokenized once without
special tokens; the stream is cut into consecutive non-overlapping windows of `seqlen` tokens (the
first `max_windows` of them); each window is scored on its own, and
  ppl = exp( Σ_windows Σ_{t=2..L} −log p(x_t | x_<t) / (windows · (L − 1)) ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as functional
from torch import nn


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    windows: int
    scored_tokens: int
    protocol: str
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_label(dataset: str) -> str:
    """A short, machine-independent name: named sources as they are, local paths by their last two parts."""
    parts = Path(dataset).parts
    return dataset if len(parts) <= 1 else "/".join(parts[-2:])


def protocol_name(dataset: str, seqlen: int, windows: int) -> str:
    return f"token-ppl[{dataset_label(dataset)}|seqlen={seqlen}|windows={windows}|join=\\n\\n|no-special-tokens]"


def perplexity(model: nn.Module, tokens: torch.Tensor, seqlen: int, dataset: str,
               max_windows: int | None = None, batch_size: int = 8,
               device: torch.device | str = "cpu") -> PerplexityResult:
    """Perplexity of `model` on the 1-D token stream `tokens` (see the module docstring)."""
    available = tokens.numel() // seqlen
    windows = available if max_windows is None else min(max_windows, available)
    if windows == 0:
        raise ValueError(f"evaluation: the text holds {tokens.numel()} tokens, fewer than one window of {seqlen}")
    stream = tokens[: windows * seqlen].view(windows, seqlen)
    total_nll = 0.0
    model_device = next(model.parameters()).device
    model.to(device)
    with torch.no_grad():
        for batch in stream.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            total_nll += float(functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                        batch[:, 1:].reshape(-1), reduction="sum"))
    model.to(model_device)
    scored = windows * (seqlen - 1)
    mean_nll = total_nll / scored
    return PerplexityResult(math.exp(mean_nll), mean_nll, windows, scored, protocol_name(dataset, seqlen, windows),
                            {"dataset": dataset_label(dataset), "seqlen": seqlen, "max_windows": max_windows,
                             "dtype": str(next(model.parameters()).dtype)})
