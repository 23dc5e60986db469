"""Non-uniform sparsity across blocks, with the model-wide sparsity unchanged.

OWL (Yin et al., ICML 2024): block l's outlier ratio D_l is the share of its Wanda scores |W_ij|·‖x_j‖ (all its
linears pooled, on the dense model's inputs) above M times their mean. Blocks with more outliers keep more:
  a_l = 2λ (D_l − min D) / (max D − min D),   s_l = s − (a_l − mean(a))
so the s_l lie within s ± λ and average to s exactly (every block has the same linears).
Depth ramp: s_l = s + δ·(l − (L − 1)/2)/(L − 1), from s − δ/2 at the first block to s + δ/2 at the last.
Whole weights: each s_l is then rounded to a multiple of 1/g, g the gcd of the block's input widths, so every row
of every linear drops exactly s_l·d_in weights, with the rounding carried from block to block
(s_l = (round(g·Σ_{i≤l} s_i) − round(g·Σ_{i<l} s_i))/g): the s_l sum to round(g·L·s)/g, exactly L·s whenever
g·L·s is whole (SmolLM2: g = 192, L = 30, at any s in steps of 1/5760), where per-row methods at a uniform s would
drop floor(s·d_in) per row and fall short.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field


class LayerBudget(BaseModel):
    """How the target sparsity is spread over the blocks: OWL (its λ and M) or a linear depth ramp (its δ)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["owl", "ramp"] = "owl"
    owl_lambda: float = Field(0.08, gt=0.0, lt=0.5, description="OWL: the largest departure from the target")
    owl_threshold: float = Field(5.0, gt=0.0, description="OWL: M, a score is an outlier above M times the mean")
    ramp_delta: float = Field(0.1, gt=0.0, lt=1.0, description="ramp: last block's sparsity minus the first's")


def outlier_ratio(weights: Mapping[str, torch.Tensor], input_norms: Mapping[str, torch.Tensor],
                  threshold: float) -> float:
    """Share of the block's Wanda scores |W_ij|·‖x_j‖ (weights d_out × d_in, norms ‖x_j‖ per input) above
    `threshold` times their mean, all linears pooled."""
    scores = torch.cat([(weights[name].abs() * input_norms[name].unsqueeze(0)).flatten().float() for name in weights])
    return float((scores > threshold * scores.mean()).float().mean())


def block_sparsities(budget: LayerBudget, target: float, ratios: list[float] | None, blocks: int,
                     input_widths: tuple[int, ...]) -> list[float]:
    """Each block's sparsity (see the module docstring); `ratios` are the OWL outlier ratios (None for a ramp),
    `input_widths` the d_in of a block's linears."""
    return whole_weight_sparsities(spread_sparsities(budget, target, ratios, blocks), math.gcd(*input_widths))


def whole_weight_sparsities(sparsities: list[float], granularity: int) -> list[float]:
    """The s_l as multiples of 1/g that sum to round(g·Σ s_l)/g, each block's rounding carried into the next."""
    cumulative = torch.tensor(sparsities, dtype=torch.float64).cumsum(0)
    steps = torch.round(cumulative * granularity).to(torch.long)
    return [int(count) / granularity for count in torch.diff(steps, prepend=steps.new_zeros(1))]


def spread_sparsities(budget: LayerBudget, target: float, ratios: list[float] | None, blocks: int) -> list[float]:
    """OWL's or the ramp's s_l before rounding to whole weights."""
    if budget.kind == "ramp":
        steps = torch.arange(blocks, dtype=torch.float64) - (blocks - 1) / 2
        offsets = budget.ramp_delta * steps / max(blocks - 1, 1)
    else:
        outliers = torch.tensor(ratios, dtype=torch.float64)
        spread = float(outliers.max() - outliers.min())
        scaled = (outliers - outliers.min()) * (2 * budget.owl_lambda / spread) if spread > 0 else outliers * 0
        offsets = -(scaled - scaled.mean())
    return [target + float(offset) for offset in offsets]


def widest_departure(budget: LayerBudget) -> float:
    """How far a block's sparsity may lie from the target: λ (OWL) or δ/2 (ramp)."""
    return budget.owl_lambda if budget.kind == "owl" else budget.ramp_delta / 2
