"""ADMM mask search with a gradual sparsity schedule (Boža, "Fast and Effective Weight Update for Pruned Large
Language Models", TMLR 2024), finished by the exact refit of the kept weights (APT's joint solve).

Layer problem: min_Ŵ ½ tr((Ŵ − W) H (Ŵ − W)ᵀ) s.t. Ŵ follows the pattern. With the inputs normalised
(D = √diag H, H̃ = D⁻¹HD⁻¹, W̃ = WD) and the split Ŵ = Z (Z carries the pattern), scaled ADMM iterates
  Ŵ ← (W̃H̃ + ρ(Z − U)) (H̃ + ρI)⁻¹,   Z ← the pattern's projection of Ŵ + U,   U ← U + Ŵ − Z,
the projection keeping the largest |Ŵ + U| at sparsity s_k = s·(1 − (1 − (k+1)/K)³) (the cubic schedule: the
mask tightens over the first K rounds; later rounds re-select it at s, so weights can still swap). Unstructured,
the projection is per row (each row loses its share) or over the matrix (`mask_scope`), optionally with a floor
on every row's kept count (`row_floor`). N:M follows the same schedule as Boža's code does: each group's N largest
are kept, and of the other weights the s_k·numel smallest over the matrix are pruned, so the pattern is exact
from round K − 1 on. The final mask
is Z's; the kept weights are then refit to the least-squares optimum on that support, each row solving
  H̃_KK ŵ_K = (H̃ w̃)_K   (K: the row's kept columns)
by conjugate gradients preconditioned with (H̃⁻¹)_KK, batched over rows and started from Z (the exact solution of
APT's joint removal, found iteratively: O(steps·d_out·d_in²) instead of a |P|×|P| factorisation per row); the layer
record says whether every row reached the tolerance (`refit_converged`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from pruning.errors import ConfigError
from pruning.methods.base import MAX_ROUNDS, InputStatistics, LayerResult
from pruning.methods.hessian import REFIT_STEPS, REFIT_TOLERANCE, damped_hessian, refit_on_mask, spd_inverse
from pruning.methods.masks import check_nm_divisible, matrix_mask, nm_mask, row_count_mask, row_mask
from pruning.methods.sparsity import SparsityConfig


class ADMMConfig(SparsityConfig):
    method: Literal["admm"] = "admm"
    iterations: int = Field(30, gt=0, le=MAX_ROUNDS,
                            description="ADMM rounds in all; the mask is re-selected in every one")
    mask_iterations: int = Field(20, gt=0, le=MAX_ROUNDS,
                                 description="rounds over which the sparsity rises to its target (cubic schedule)")
    rho: float = Field(1.0, gt=0.0, description="ADMM penalty on the normalised problem (diag H̃ = 1)")
    mask_scope: Literal["row", "matrix"] = Field(
        "row", description="unstructured: keep the largest |Ŵ + U| per row (every row its share) or over the "
                           "whole matrix (rows keep different shares, see row_floor)")
    row_floor: float = Field(0.0, ge=0.0, le=1.0, description="mask_scope matrix: every row keeps at least this "
                             "fraction of the mean kept count per row (0: no floor; 1: the per-row mask)")
    nm_schedule: Literal["gradual", "fixed"] = Field(
        "gradual", description="N:M: the cubic schedule (each round's share pruned among the weights outside "
                               "their group's top N, reaching exact N:M at mask_iterations) or N:M from round one")
    damping: float = Field(0.01, ge=0.0, description="λ in H + λ·mean(diag H)·I, as SparseGPT")
    refit_iterations: int = Field(REFIT_STEPS, ge=0, le=MAX_ROUNDS,
                                  description="preconditioned conjugate-gradient steps at most for the final refit")
    refit_tolerance: float = Field(REFIT_TOLERANCE, gt=0.0,
                                   description="stop the refit once every row's residual is below this fraction of "
                                               "its right-hand side")

    @model_validator(mode="after")
    def _schedule_fits(self) -> ADMMConfig:
        if self.mask_iterations > self.iterations:
            raise ConfigError(f"mask_iterations {self.mask_iterations} exceeds iterations {self.iterations}; the "
                              "sparsity must reach its target by the last round")
        if self.row_floor and self.mask_scope != "matrix":
            raise ConfigError(f"row_floor {self.row_floor} applies to mask_scope matrix only; set mask_scope=matrix "
                              "or leave row_floor out")
        if self.mask_scope == "matrix" and self.nm is not None:
            raise ConfigError(f"mask_scope matrix is for unstructured sparsity; pattern {self.pattern} fixes every "
                              "group's count: leave mask_scope out")
        return self


def scheduled_sparsity(sparsity: float, round_index: int, mask_rounds: int) -> float:
    """s_k = s·(1 − (1 − (k+1)/K)³): rises from near 0 to s at round K − 1, then stays."""
    progress = min(1.0, (round_index + 1) / mask_rounds)
    return sparsity * (1.0 - (1.0 - progress) ** 3)


def round_mask(values: torch.Tensor, config: ADMMConfig, sparsity: float) -> torch.Tensor:
    """Kept mask of the pattern at this round's `sparsity` (see the module docstring), by |value|."""
    scores = values.abs()
    if config.nm is not None:
        if config.nm_schedule == "fixed" or sparsity >= config.nm.sparsity - 1e-12:
            return nm_mask(scores, config.nm)
        # Gradual N:M: each group's top N are kept; of the other weights the lowest s_k·numel over the matrix go.
        return matrix_mask(scores.masked_fill(nm_mask(scores, config.nm), torch.inf), sparsity)
    if config.mask_scope == "row":
        return row_mask(scores, sparsity)  # exactly floor(s·numel) removed, the per-row counts one apart
    rows = scores.shape[0]
    kept_total = scores.numel() - math.floor(scores.numel() * sparsity)
    floor_count = math.floor(config.row_floor * kept_total / rows) if rows else 0
    if floor_count:
        # Each row's top floor_count are kept whatever the rest of the matrix scores.
        scores = scores.masked_fill(row_count_mask(scores, torch.full((rows,), floor_count)), torch.inf)
    return matrix_mask(scores, sparsity)


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
        mask = round_mask(current + dual, config,
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
