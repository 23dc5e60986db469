"""Structured magnitude baseline: keep the column groups of largest norm ‖W_:,g‖_F; optionally refit them."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.structured import ColumnGroups, StructuredBudget, prune_by_column_scores


class StructuredMagnitudeConfig(StructuredBudget):
    method: Literal["structured-magnitude"] = "structured-magnitude"
    refit: bool = Field(False, description="least-squares refit of the kept columns (B_S = H_SS⁻¹ G_S)")

    @property
    def needs_calibration(self) -> bool:
        """Only the refit reads the inputs; without it the method is data-free."""
        return self.refit


def prune_layer(weight: torch.Tensor, statistics: InputStatistics | None, config: StructuredMagnitudeConfig,
                groups: ColumnGroups) -> LayerResult:
    # score_g = ‖W_:,g‖²_F, summed from its columns
    return prune_by_column_scores(weight, statistics, config, groups, weight.square().sum(dim=0), config.refit)


CONFIG = StructuredMagnitudeConfig  # the registry reads the method name and options from here
