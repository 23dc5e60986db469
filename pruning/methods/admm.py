"""ADMM mask search with a gradual sparsity schedule (Boža, "Fast and Effective Weight Update for Pruned Large
Language Models", TMLR 2024), finished by the exact refit of the kept weights (APT's joint solve).

Layer problem: min_Ŵ ½ tr((Ŵ − W) H (Ŵ − W)ᵀ) s.t. Ŵ follows the pattern. With the inputs normalised
(D = √diag H, H̃ = D⁻¹HD⁻¹, W̃ = WD) and the split Ŵ = Z (Z carries the pattern), scaled ADMM iterates
  Ŵ ← (W̃H̃ + ρ(Z − U)) (H̃ + ρI)⁻¹,   Z ← the pattern's projection of Ŵ + U,   U ← U + Ŵ − Z,
the projection keeping the largest |Ŵ + U| at sparsity s_k = s·(1 − (1 − (k+1)/K)³) (the cubic schedule: the
mask tightens over the first K rounds; later rounds re-select it at s, so weights can still swap). The final mask
is Z's; the kept weights are then refit to the least-squares optimum on that support, each row solving
  H̃_KK ŵ_K = (H̃ w̃)_K   (K: the row's kept columns)
by conjugate gradients preconditioned with (H̃⁻¹)_KK, batched over rows and started from Z (the exact solution of
APT's joint removal, found iteratively: O(steps·d_out·d_in²) instead of a |P|×|P| factorisation per row); the layer
record says whether every row reached the tolerance (`refit_converged`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from pruning.errors import ConfigError
from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.hessian import REFIT_STEPS, REFIT_TOLERANCE, damped_hessian, refit_on_mask, spd_inverse
from pruning.methods.masks import check_nm_divisible, nm_mask, row_mask
from pruning.methods.sparsity import SparsityConfig


class ADMMConfig(SparsityConfig):
    method: Literal["admm"] = "admm"
    iterations: int = Field(30, gt=0, description="ADMM rounds in all; the mask is re-selected in every one")
    mask_iterations: int = Field(20, gt=0, description="rounds over which the sparsity rises to its target "
                                                       "(cubic schedule)")
    rho: float = Field(1.0, gt=0.0, description="ADMM penalty on the normalised problem (diag H̃ = 1)")
    damping: float = Field(0.01, ge=0.0, description="λ in H + λ·mean(diag H)·I, as SparseGPT")
    refit_iterations: int = Field(REFIT_STEPS, ge=0,
                                  description="preconditioned conjugate-gradient steps at most for the final refit")
    refit_tolerance: float = Field(REFIT_TOLERANCE, gt=0.0,
                                   description="stop the refit once every row's residual is below this fraction of "
                                               "its right-hand side")

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
    """Kept mask of the pattern: N of every M by |value|, else the largest per row (`row_mask`: exactly floor(s·numel)
    removed, the per-row counts one apart)."""
    scores = values.abs()
    return nm_mask(scores, config.nm) if config.nm is not None else row_mask(scores, sparsity)


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: ADMMConfig) -> LayerResult:
    if config.nm is not None:
        check_nm_divisible(weight.shape[1], config.nm)
    # fp32 throughout: the normalised systems (unit diagonal, damped, +ρI) are well conditioned.
    hessian = damped_hessian(statistics.hessian.to(weight.device), config.damping).to(torch.float32)
    scale = torch.diagonal(hessian).sqrt()
    normalised = hessian / scale.unsqueeze(0) / scale.unsqueeze(1)
    target = weight.to(torch.float32) * scale  # W̃ = W D
    # Ŵ = (W̃H̃ + ρ(Z − U))(H̃ + ρI)⁻¹; H̃ and (H̃ + ρI)⁻¹ are symmetric.
    penalised_inverse = spd_inverse(normalised + config.rho * torch.eye(len(scale), dtype=torch.float32,
                                                                          device=weight.device))
    fitted = target @ normalised
    current, dual = target.clone(), torch.zeros_like(target)
    for round_index in range(config.iterations):
        mask = _project(current + dual, config,
                        scheduled_sparsity(config.target_sparsity, round_index, config.mask_iterations))
        sparse = (current + dual) * mask
        dual += current - sparse
        current = (fitted + config.rho * (sparse - dual)) @ penalised_inverse
    # The least-squares refit of the kept weights on the final mask (normalised problem, started from Z).
    refit = refit_on_mask(target, normalised, spd_inverse(normalised), mask, sparse, config.refit_iterations,
                          config.refit_tolerance)
    result = (refit.solution / scale).to(weight.dtype)
    return LayerResult.measure(weight, result, mask, statistics,
                               details={"refit_steps": float(refit.steps), "refit_converged": float(refit.converged)})


CONFIG = ADMMConfig  # the registry reads the method name and options from here
