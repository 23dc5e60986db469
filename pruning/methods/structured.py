"""Structured pruning of a sub-block's second linear by groups of input columns, shared by the structured methods.

The second linear of a sub-block (attention `o_proj`, MLP `down_proj`) reads one column group per unit:
an MLP neuron (group size 1) or an attention KV group (its query heads' columns, head_dim × queries per group,
contiguous). Removing a group zeroes those columns; the rows that produced them (q/k/v, gate/up) become dead
and are sliced away when the model is reassembled.

In B = Wᵀ (d_in × d_out) with H = Σ x xᵀ + λ·mean(diag)·I and G = H·B₀, every structured method minimises
  f(B) = ½ tr(Bᵀ H B) − tr(Bᵀ G)   (= ½‖X(B − B₀)‖² + ½λ̄‖B − B₀‖² + const)
over B with at most k nonzero groups; on a fixed support S the optimum is the refit B_S = H_SS⁻¹ G_S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pruning.errors import ConfigError
from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.hessian import damped_hessian

UnitKind = Literal["mlp", "attention"]


@dataclass(frozen=True)
class ColumnGroups:
    """`count` contiguous groups of `size` input columns of a sub-block's second linear."""

    kind: UnitKind
    size: int
    count: int

    def columns(self, groups: torch.Tensor) -> torch.Tensor:
        """Column indices of the given group indices."""
        return (groups.unsqueeze(1) * self.size + torch.arange(self.size, device=groups.device)).flatten()


class StructuredBudget(BaseModel):
    """What to remove from every block, uniformly: `sparsity`, the fraction of MLP neurons, and
    `attention_groups`, a number of attention KV groups. The pruned model is physically smaller."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str  # each method's config narrows this to its literal name
    sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of MLP neurons removed per block")
    pattern: Literal["structured"] = "structured"
    attention_groups: int = Field(0, ge=0, description="KV groups (a KV head with its query heads) removed per block")
    round_to: int = Field(1, gt=0, description="kept MLP neurons rounded down to a multiple of this (8, 64, 128)")
    ridge: float = Field(0.01, ge=0.0, description="λ in H + λ·mean(diag H)·I")

    @property
    def needs_calibration(self) -> bool:
        return True

    @model_validator(mode="after")
    def _removes_something(self) -> StructuredBudget:
        if self.sparsity == 0 and self.attention_groups == 0:
            raise ConfigError("nothing to remove: set sparsity (fraction of MLP neurons) and/or "
                             "attention_groups (KV groups per block)")
        return self

    @property
    def nm(self) -> None:
        return None

    @property
    def target_sparsity(self) -> float:
        return self.sparsity

    def kept(self, groups: ColumnGroups) -> int:
        """How many groups a layer keeps."""
        if groups.kind == "attention":
            if self.attention_groups >= groups.count:
                raise ConfigError(f"attention_groups {self.attention_groups} would remove all {groups.count} KV groups")
            return groups.count - self.attention_groups
        kept = math.ceil(groups.count * (1.0 - self.sparsity))
        return max(self.round_to, kept // self.round_to * self.round_to)


@dataclass
class StructuredProblem:
    """H (damped), G = H·B₀ and B₀ = Wᵀ in float64, with the column groups."""

    hessian: torch.Tensor
    target: torch.Tensor
    dense: torch.Tensor
    groups: ColumnGroups

    @classmethod
    def build(cls, weight: torch.Tensor, statistics: InputStatistics, groups: ColumnGroups,
              ridge: float) -> StructuredProblem:
        hessian = damped_hessian(statistics.gram.to(weight.device, torch.float64), ridge)
        dense = weight.t().to(torch.float64)
        return cls(hessian, hessian @ dense, dense, groups)

    def objective(self, coefficients: torch.Tensor) -> float:
        """f(B) = ½ tr(Bᵀ H B) − tr(Bᵀ G)."""
        return float(0.5 * (coefficients * (self.hessian @ coefficients)).sum() - (coefficients * self.target).sum())

    def refit(self, kept_groups: torch.Tensor) -> torch.Tensor:
        """B_S = H_SS⁻¹ G_S on the kept groups' columns, zero elsewhere."""
        support = self.groups.columns(kept_groups)
        coefficients = torch.zeros_like(self.dense)
        factor = torch.linalg.cholesky(self.hessian[support][:, support])
        coefficients[support] = torch.cholesky_solve(self.target[support], factor)
        return coefficients

    def result(self, weight: torch.Tensor, coefficients: torch.Tensor, kept_groups: torch.Tensor,
               statistics: InputStatistics, details: dict[str, float] | None = None) -> LayerResult:
        """The layer result: Ŵ = Bᵀ, with every column of a removed group exactly zero."""
        column_kept = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device)
        column_kept[self.groups.columns(kept_groups)] = True
        coefficients = coefficients * column_kept.unsqueeze(1)
        mask = column_kept.unsqueeze(0).expand_as(weight).clone()
        return LayerResult.measure(weight, coefficients.t().to(weight.dtype), mask, statistics, details={
            "kept_groups": float(kept_groups.numel()), "objective": self.objective(coefficients), **(details or {})})


def top_groups(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Indices (ascending) of the `kept` highest-scoring groups."""
    return torch.sort(torch.topk(scores, kept).indices).values


def prune_by_column_scores(weight: torch.Tensor, statistics: InputStatistics | None, budget: StructuredBudget,
                           groups: ColumnGroups, column_scores: torch.Tensor, refit: bool) -> LayerResult:
    """The score baselines: keep the groups of largest summed column score; optionally refit them
    (the refit needs `statistics`; without them the kept columns stay as they are and no error is measured)."""
    kept = top_groups(column_scores.view(groups.count, groups.size).sum(dim=1), budget.kept(groups))
    if statistics is None:
        if refit:
            raise ValueError("the refit of the kept column groups needs input statistics")
        column_kept = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device)
        column_kept[groups.columns(kept)] = True
        mask = column_kept.unsqueeze(0).expand_as(weight).clone()
        return LayerResult.measure(weight, weight * mask, mask, None, details={"kept_groups": float(kept.numel())})
    problem = StructuredProblem.build(weight, statistics, groups, budget.ridge)
    return problem.result(weight, problem.refit(kept) if refit else problem.dense, kept, statistics)
