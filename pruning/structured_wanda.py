"""Activation-weighted structured baseline (Wanda-sp / FLAP style): keep the column groups of largest
  score_g = Σ_{j∈g} ‖W_:,j‖² · s_j,   s_j = (1/n) Σ_t x_tj²
(the output energy each input column carries); optionally refit the kept columns by least squares."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pruning.statistics import InputStatistics, LayerResult
from pruning.structured import ColumnGroups, StructuredBudget, StructuredProblem, top_groups


class StructuredWandaConfig(StructuredBudget):
    method: Literal["structured-wanda"] = "structured-wanda"
    refit: bool = Field(True, description="least-squares refit of the kept columns (B_S = H_SS⁻¹ G_S)")


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: StructuredWandaConfig,
                groups: ColumnGroups) -> LayerResult:
    problem = StructuredProblem.build(weight, statistics, groups, config.ridge)
    column_scores = weight.square().sum(dim=0) * statistics.squared_input_norms.to(weight.device)
    kept = top_groups(column_scores.view(groups.count, groups.size).sum(dim=1), config.kept(groups))
    coefficients = problem.refit(kept) if config.refit else problem.dense
    return problem.result(weight, coefficients, kept, statistics)
