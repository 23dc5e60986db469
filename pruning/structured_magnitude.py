"""Structured magnitude baseline: keep the column groups of largest norm ‖W_:,g‖_F; optionally refit them."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pruning.statistics import InputStatistics, LayerResult
from pruning.structured import ColumnGroups, StructuredBudget, StructuredProblem, top_groups


class StructuredMagnitudeConfig(StructuredBudget):
    method: Literal["structured-magnitude"] = "structured-magnitude"
    refit: bool = Field(False, description="least-squares refit of the kept columns (B_S = H_SS⁻¹ G_S)")


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: StructuredMagnitudeConfig,
                groups: ColumnGroups) -> LayerResult:
    problem = StructuredProblem.build(weight, statistics, groups, config.ridge)
    # score_g = ‖W_:,g‖_F
    scores = weight.square().sum(dim=0).view(groups.count, groups.size).sum(dim=1)
    kept = top_groups(scores, config.kept(groups))
    coefficients = problem.refit(kept) if config.refit else problem.dense
    return problem.result(weight, coefficients, kept, statistics)
