"""ADMM mask search with a gradual sparsity schedule (Boža, "Fast and Effective Weight Update for Pruned Large
Language Models", TMLR 2024), finished by the exact refit of the kept weights (APT's joint solve).

Layer problem: min_Ŵ ½ tr((Ŵ − W) H (Ŵ − W)ᵀ) s.t. Ŵ follows the pattern. With the inputs normalised
(D = √diag H, H̃ = D⁻¹HD⁻¹, W̃ = WD) and the split Ŵ = Z (Z carries the pattern), scaled ADMM iterates
  Ŵ ← (W̃H̃ + ρ(Z − U)) (H̃ + ρI)⁻¹,   Z ← the pattern's projection of Ŵ + U,   U ← U + Ŵ − Z,
the projection keeping the largest |Ŵ + U| at sparsity s_k = s·(1 − (1 − (k+1)/K)³) (the cubic schedule: the
mask tightens over the first K rounds; later rounds re-select it at s, so weights can still swap). The final mask
is Z's; the kept weights are then refit exactly: the least-squares optimum on that support,
δ = −w_P [(H⁻¹)_PP]⁻¹ (H⁻¹)_P,: per row (so the last ADMM values matter only through the mask).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from pruning.apt import joint_removal
from pruning.errors import ConfigError
from pruning.hessian import damped_hessian, spd_inverse
from pruning.masks import check_nm_divisible, nm_mask, row_mask
from pruning.statistics import InputStatistics, LayerResult
from pruning.targets import SparsityConfig


class ADMMConfig(SparsityConfig):
    method: Literal["admm"] = "admm"
    iterations: int = Field(30, gt=0, description="ADMM rounds in all; the mask is re-selected in every one")
    mask_iterations: int = Field(20, gt=0, description="rounds over which the sparsity rises to its target "
                                                       "(cubic schedule)")
    rho: float = Field(1.0, gt=0.0, description="ADMM penalty on the normalised problem (diag H̃ = 1)")
    damping: float = Field(0.01, ge=0.0, description="λ in H + λ·mean(diag H)·I, as SparseGPT")

    @model_validator(mode="after")
    def _schedule_fits(self) -> ADMMConfig:
        if self.mask_iterations > self.iterations:
            raise ConfigError(f"mask_iterations {self.mask_iterations} exceeds iterations {self.iterations}; the "
                              "sparsity must reach its target by the last round")
        return self


def scheduled_sparsity(sparsity: float, round_index: int, mask_rounds: int) -> float:
    """s_k = s·(1 − (1 − (k+1)/K)³): rises from near 0 to s at round K − 1, then stays."""
    progress = min(1.0, (round_index + 1) / mask_rounds)
    return sparsity * (1.0 - (1.0 - progress) ** 3)


def _project(values: torch.Tensor, config: ADMMConfig, sparsity: float) -> torch.Tensor:
    """Kept mask of the pattern: N of every M by |value|, else the largest (1 − s)·d_in per row."""
    scores = values.abs()
    return nm_mask(scores, config.nm) if config.nm is not None else row_mask(scores, sparsity)


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: ADMMConfig) -> LayerResult:
    if config.nm is not None:
        check_nm_divisible(weight.shape[1], config.nm)
    hessian = damped_hessian(statistics.hessian.to(weight.device), config.damping).to(torch.float64)
    scale = torch.diagonal(hessian).sqrt()
    normalised = hessian / scale.unsqueeze(0) / scale.unsqueeze(1)
    target = weight.to(torch.float64) * scale  # W̃ = W D
    # Ŵ = (W̃H̃ + ρ(Z − U))(H̃ + ρI)⁻¹; H̃ and (H̃ + ρI)⁻¹ are symmetric.
    penalised_inverse = spd_inverse(normalised + config.rho * torch.eye(len(scale), dtype=torch.float64,
                                                                          device=weight.device))
    fitted = target @ normalised
    current, dual = target.clone(), torch.zeros_like(target)
    for round_index in range(config.iterations):
        mask = _project(current + dual, config,
                        scheduled_sparsity(config.target_sparsity, round_index, config.mask_iterations))
        sparse = (current + dual) * mask
        dual += current - sparse
        current = (fitted + config.rho * (sparse - dual)) @ penalised_inverse
    # Exact refit of the kept weights on the final mask, in the original scale.
    original = weight.to(torch.float64)
    delta, loss = joint_removal(original, ~mask, spd_inverse(hessian))
    result = ((original + delta) * mask).to(weight.dtype)
    return LayerResult.measure(weight, result, mask, statistics, details={"loss": loss})
