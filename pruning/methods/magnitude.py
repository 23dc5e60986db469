"""Magnitude pruning: drop the smallest |W_ij|.

Unstructured: one threshold over the whole matrix (as the SparseGPT and Wanda baselines do);
N:M: the N largest |W_ij| of every M consecutive inputs of each row. No weight update.
"""

from __future__ import annotations

from typing import Literal

import torch

from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.masks import matrix_mask, nm_mask
from pruning.methods.sparsity import SparsityConfig


class MagnitudeConfig(SparsityConfig):
    method: Literal["magnitude"] = "magnitude"

    @property
    def needs_calibration(self) -> bool:
        return False


def prune_layer(weight: torch.Tensor, statistics: InputStatistics | None, config: MagnitudeConfig) -> LayerResult:
    """`statistics`, when given, only measures the layer's reconstruction error."""
    scores = weight.abs()
    mask = nm_mask(scores, config.nm) if config.nm else matrix_mask(scores, config.target_sparsity)
    return LayerResult.measure(weight, weight * mask, mask, statistics)


CONFIG = MagnitudeConfig  # the registry reads the method name and options from here
