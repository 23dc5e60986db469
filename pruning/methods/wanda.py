"""Wanda (Sun, Liu, Bair & Kolter, ICLR 2024): prune by weight magnitude times input norm.

  S_ij = |W_ij| · sqrt(s_j),   s_j = (1/n) Σ_t x_tj²
Per output row the lowest scores are dropped, floor(d_in·p) or one more (`row_mask`: floor(p·numel) in all; N:M:
per row, per group of M). No update.
"""

from __future__ import annotations

from typing import Literal

import torch

from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.masks import nm_mask, row_mask
from pruning.methods.sparsity import SparsityConfig


class WandaConfig(SparsityConfig):
    method: Literal["wanda"] = "wanda"


def wanda_scores(weight: torch.Tensor, statistics: InputStatistics) -> torch.Tensor:
    """S_ij = |W_ij| · sqrt(s_j)."""
    return weight.abs() * statistics.squared_input_norms.sqrt().unsqueeze(0)


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: WandaConfig) -> LayerResult:
    scores = wanda_scores(weight, statistics)
    mask = nm_mask(scores, config.nm) if config.nm else row_mask(scores, config.target_sparsity)
    return LayerResult.measure(weight, weight * mask, mask, statistics)


CONFIG = WandaConfig  # the registry reads the method name and options from here
