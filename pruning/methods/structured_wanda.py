"""Activation-weighted structured baseline (Wanda-sp / FLAP style): keep the column groups of largest
  score_g = Σ_{j∈g} ‖W_:,j‖² · s_j,   s_j = (1/n) Σ_t x_tj²
(the output energy each input column carries); optionally refit the kept columns by least squares."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.structured import ColumnGroups, StructuredBudget, prune_by_column_scores


class StructuredWandaConfig(StructuredBudget):
    method: Literal["structured-wanda"] = "structured-wanda"
    refit: bool = Field(True, description="least-squares refit of the kept columns (B_S = H_SS⁻¹ G_S)")


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: StructuredWandaConfig,
                groups: ColumnGroups) -> LayerResult:
    column_scores = weight.square().sum(dim=0) * statistics.squared_input_norms.to(weight.device)
    return prune_by_column_scores(weight, statistics, config, groups, column_scores, config.refit)


CONFIG = StructuredWandaConfig  # the registry reads the method name and options from here
