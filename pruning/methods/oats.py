"""OATS (Zhang & Papyan, ICLR 2025): each weight = sparse + low-rank, by alternating thresholding.

With Wanda's statistic s_j = (1/n) Σ_t x_tj² and D = diag(√s), decompose the scaled weight W̃ = W·D:
  min ‖W̃ − S − L‖_F   s.t. rank(L) ≤ r,  S keeps k weights per row (or an N:M pattern)
  repeat T times:  L = SVD_r(W̃ − S),  S = HardThreshold(W̃ − L)
and return Ŵ = (S + L)·D⁻¹, also as factors: sparse S·D⁻¹ and U = U_r Σ_r, V = V_rᵀ D⁻¹.

Parameter accounting for compression ρ (fraction of the d_out·d_in parameters removed), rank ratio κ:
  r = ⌊κ(1−ρ)·d_out·d_in / (d_out + d_in)⌋, and S gets the rest: ⌊(1−ρ)·d_out·d_in⌋ − r(d_out + d_in)
kept weights, spread evenly over rows (the first rows take one more when it does not divide), so the
total kept is exactly ⌊(1−ρ)·d_out·d_in⌋; with κ = 0 and (1−ρ)·d_in whole, S is Wanda's mask.
For an N:M pattern S keeps exactly N of every M and, as in the paper, r = ⌊κ/(1−κ)·(N/M)·d_out·d_in/(d_out+d_in)⌋;
the total compression then follows from the pattern and κ and is reported, not assumed.

Hessian refit (`hessian_refit` rounds, off by default; the paper's objective sees only diag(XᵀX)): with the masks
and rank fixed, alternate on the layer's own objective ‖(W − S − L)X‖² = tr(Δ H Δᵀ), H = XXᵀ (damped):
  S ← the least-squares optimum of W − L on S's support (rows by conjugate gradients, as `admm`'s refit),
  L ← SVD_r((W − S)·C)·C⁻¹ with H = C Cᵀ (the whitened SVD: the best rank-r L under that norm),
then S once more. Done on the normalised problem (diag H = 1).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from pruning.methods.base import MAX_ROUNDS, MAX_SEED, InputStatistics, LayerResult, SparseLowRank
from pruning.methods.hessian import REFIT_STEPS, REFIT_TOLERANCE, damped_hessian, refit_on_mask
from pruning.methods.low_rank import TruncatedSVD, full_truncated_svd, warm_truncated_svd
from pruning.methods.masks import NMPattern, check_nm_divisible, nm_mask, row_count_mask
from pruning.methods.sparsity import SparsityConfig


class OATSConfig(SparsityConfig):
    """`sparsity` is the total compression ρ (sparse nonzeros plus factor entries count as kept)."""

    method: Literal["oats"] = "oats"
    rank_ratio: float = Field(0.3, ge=0.0, lt=1.0, description="κ: share of the kept parameters in the low-rank term")
    iterations: int = Field(80, gt=0, le=MAX_ROUNDS, description="T: alternating-thresholding rounds")
    svd: Literal["subspace", "full"] = Field("subspace", description="after a full first SVD, warm-started subspace "
                                                                    "iteration; or a full SVD every round")
    power_iterations: int = Field(1, ge=0, le=MAX_ROUNDS, description="power steps per warm-started subspace SVD")
    oversampling: int = Field(8, ge=0, description="extra random columns in the subspace SVD")
    tolerance: float | None = Field(None, gt=0.0, description="stop once the residual's relative change is below "
                                                              "this (off by default: always T rounds)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    hessian_refit: int = Field(0, ge=0, le=MAX_ROUNDS,
                               description="rounds of refitting S (on its support) and L (whitened SVD) to the "
                                           "full-Hessian objective after alternating thresholding")
    damping: float = Field(0.01, ge=0.0, description="λ in H + λ·mean(diag H)·I for the Hessian refit")


def oats_rank(rows: int, columns: int, config: OATSConfig) -> int:
    """r = ⌊κ·density·d_out·d_in/(d_out + d_in)⌋, density = 1−ρ (or (N/M)/(1−κ) for N:M)."""
    density = config.nm.n / config.nm.m / (1.0 - config.rank_ratio) if config.nm else 1.0 - config.target_sparsity
    return min(math.floor(config.rank_ratio * density * rows * columns / (rows + columns)), rows, columns)


def sparse_kept_per_row(rows: int, columns: int, rank: int, config: OATSConfig) -> torch.Tensor:
    """How many weights each row of S keeps: ⌊(1−ρ)·d_out·d_in⌋ − r(d_out + d_in) spread over the rows."""
    kept = max(math.floor((1.0 - config.target_sparsity) * rows * columns) - rank * (rows + columns), 0)
    per_row = torch.full((rows,), kept // rows, dtype=torch.long)
    per_row[: kept % rows] += 1
    return per_row


def _hard_threshold(residual: torch.Tensor, kept_per_row: torch.Tensor, pattern: NMPattern | None) -> torch.Tensor:
    """Keep the largest |entries| per row (or N of every M); returns the mask."""
    scores = residual.abs()
    return nm_mask(scores, pattern) if pattern is not None else row_count_mask(scores, kept_per_row)


def _alternate(scaled: torch.Tensor, rank: int, kept_per_row: torch.Tensor,
               config: OATSConfig) -> tuple[torch.Tensor, TruncatedSVD | None, int]:
    """Alternating thresholding on W̃: the final mask of S, the low-rank term, and the rounds run."""
    generator = torch.Generator(device=scaled.device).manual_seed(config.seed)
    sparse = torch.zeros_like(scaled)
    low_rank: TruncatedSVD | None = None
    previous_residual = None
    for round_index in range(1, config.iterations + 1):
        if rank == 0:  # S does not change after the first round: that round is Wanda
            return _hard_threshold(scaled, kept_per_row, config.nm), None, 1
        # The first round (S = 0) meets W̃'s flat spectrum: a full SVD; later rounds warm-start.
        low_rank = (full_truncated_svd(scaled - sparse, rank) if config.svd == "full" or low_rank is None else
                    warm_truncated_svd(scaled - sparse, low_rank, generator, config.oversampling,
                                       config.power_iterations))
        remainder = scaled - low_rank.matrix()
        mask = _hard_threshold(remainder, kept_per_row, config.nm)
        sparse = remainder * mask
        # ‖W̃ − S − L‖_F is what the rounds decrease; stop early once its relative change is small.
        residual = float(torch.linalg.norm(remainder - sparse))
        if config.tolerance is not None and previous_residual is not None and \
                abs(previous_residual - residual) <= config.tolerance * max(previous_residual, 1e-30):
            return mask, low_rank, round_index
        previous_residual = residual
    return mask, low_rank, config.iterations


def hessian_refit(weight: torch.Tensor, mask: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                  statistics: InputStatistics, config: OATSConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S (sparse, on `mask`) and the factors U, V refit to tr(ΔHΔᵀ), Δ = W − S − U·V (see the module docstring)."""
    hessian = damped_hessian(statistics.hessian.to(weight.device), config.damping).to(torch.float32)
    scale = torch.diagonal(hessian).sqrt()
    normalised = hessian / scale.unsqueeze(0) / scale.unsqueeze(1)
    factor = torch.linalg.cholesky(normalised)  # H̃ = C Cᵀ, C lower triangular
    inverse = torch.cholesky_inverse(factor)
    target = weight.to(torch.float32) * scale
    rank = up.shape[1]
    low_rank = (up @ down).to(torch.float32) * scale
    sparse = (target - low_rank) * mask
    for _ in range(config.hessian_refit):
        sparse = refit_on_mask(target - low_rank, normalised, inverse, mask, sparse, REFIT_STEPS,
                               REFIT_TOLERANCE).solution
        whitened = full_truncated_svd((target - sparse) @ factor, rank)
        up = whitened.left * whitened.values
        # V = V_rᵀ C⁻¹: solve X C = V_rᵀ through Cᵀ Xᵀ = V_r (upper triangular).
        down = torch.linalg.solve_triangular(factor.t(), whitened.right.t(), upper=True).t()
        low_rank = up @ down
    sparse = refit_on_mask(target - low_rank, normalised, inverse, mask, sparse, REFIT_STEPS, REFIT_TOLERANCE).solution
    return (sparse / scale).to(weight.dtype), up.to(weight.dtype), (down / scale).to(weight.dtype)


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: OATSConfig) -> LayerResult:
    rows, columns = weight.shape
    if config.nm is not None:
        check_nm_divisible(columns, config.nm)
    rank = oats_rank(rows, columns, config)
    # D = diag(√s); dead inputs (s_j = 0) get a tiny scale so that D⁻¹ stays finite.
    scale = statistics.squared_input_norms.to(weight.device).sqrt()
    scale = scale.clamp_min(float(scale.max()) * 1e-8 + 1e-30)
    mask, low_rank, rounds = _alternate(weight * scale, rank, sparse_kept_per_row(rows, columns, rank, config), config)

    # Back to the original basis: U = U_r Σ_r, V = V_rᵀ D⁻¹, and S·D⁻¹ = mask ⊙ (W − U·V).
    if low_rank is not None:
        up, down = low_rank.left * low_rank.values, low_rank.right / scale
    else:
        up, down = weight.new_zeros(rows, 0), weight.new_zeros(0, columns)
    if config.hessian_refit:
        sparse_weight, up, down = hessian_refit(weight, mask, up, down, statistics, config)
        low_rank_weight = up @ down
    else:
        low_rank_weight = up @ down
        sparse_weight = (weight - low_rank_weight) * mask
    details = {"rank": float(rank), "iterations": float(rounds),
               "sparse_term_sparsity": 1.0 - float(mask.float().mean())}
    return LayerResult.measure(weight, sparse_weight + low_rank_weight, mask, statistics,
                               SparseLowRank(sparse_weight, up, down), details)


CONFIG = OATSConfig  # the registry reads the method name and options from here
