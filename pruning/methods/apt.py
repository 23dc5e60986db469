"""APT (Zhao et al., EMNLP 2024 Findings): prune many weights of a row at once, optimally.

For row w, damped Hessian H and pruned set P (the "multiple removal problem"):
  min_δ ½ δ H δᵀ  s.t. (w + δ)_P = 0   ⇒   δ* = −w_P [(H⁻¹)_PP]⁻¹ (H⁻¹)_P,:,   ΔL = ½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ
which equals the least-squares refit of w on its kept support. Rows are solved in batches: per row a |P|×|P|
system, the rows taken in order of |P| and each batch padded to its own largest |P| (identity on padding).

Mask selection:
  blockwise  per block of B columns, left to right: pick the block's mask by w_j²/[(H_rest)⁻¹]_jj over the whole
             block (as SparseGPT), solve the joint removal with the columns before the block frozen, so the
             update reaches the block's kept weights and every later column; H_rest = H over the columns left,
             whose inverse follows from the previous one by a Schur complement.
  row        pick each row's mask at once by w_j²/[H⁻¹]_jj, then one exact joint solve over the whole row.
N:M groups (`nm_selection`): by the single-weight score above (`saliency`), or (`joint`) by the multiple-removal
loss itself: of the C(M, M−N) ways to prune a group g, the one with the least ½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ, P ⊂ g, the
rest of the row free (exact within a group; groups are chosen independently).
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from pydantic import Field, model_validator

from pruning.errors import ConfigError
from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.hessian import damped_hessian, spd_inverse
from pruning.methods.masks import NMPattern, check_nm_divisible, matrix_mask, nm_mask, row_mask
from pruning.methods.sparsity import SparsityConfig

SOLVE_CHUNK_ROWS = 64  # rows per batched solve: at most 64·|S|² systems in memory (|S| ≤ the block width)


class APTConfig(SparsityConfig):
    method: Literal["apt"] = "apt"
    selection: Literal["blockwise", "row"] = Field("blockwise", description="mask per column block with joint "
                                                   "updates (blockwise), or per whole row then one solve (row)")
    blocksize: int = Field(128, gt=0, description="columns per block (blockwise selection)")
    damping: float = Field(0.01, ge=0.0, description="λ in H + λ·mean(diag H)·I, as SparseGPT")
    nm_selection: Literal["saliency", "joint"] = Field(
        "saliency", description="N:M: prune each group's weights by single-weight saliency, or the group's pruned "
                                "set by the joint (multiple-removal) loss over every choice")

    @model_validator(mode="after")
    def _blocks_hold_whole_groups(self) -> APTConfig:
        if self.nm is not None and self.selection == "blockwise" and self.blocksize % self.nm.m:
            raise ConfigError(f"blocksize {self.blocksize} must be a multiple of M={self.nm.m} "
                             f"for pattern {self.pattern}")
        return self


def joint_removal(weight: torch.Tensor, pruned: torch.Tensor, inverse: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The optimal update δ of every row (δ_P = −w_P, so pruned weights become 0) and Σ_rows ΔL.

    weight (rows × d), pruned mask (rows × d), inverse = H⁻¹ (d × d) of the free columns, all one dtype.
    """
    support = pruned.any(dim=0).nonzero().squeeze(1)  # S: the columns some row prunes
    if support.numel() == 0:
        return torch.zeros_like(weight), 0.0
    # Everything below works on S only: P ⊂ S for every row, so each system is a principal submatrix of (H⁻¹)_SS.
    pruned_s, weight_s = pruned[:, support], weight[:, support]  # (rows, |S|)
    width = support.numel()
    counts = pruned_s.sum(dim=1)
    most = int(counts.max())
    # Each row's pruned columns first (stable order); padding slot k points at an extra index |S| + k where an
    # identity block is appended to (H⁻¹)_SS, so padded systems are block-diagonal with 1s and solve to 0.
    order = torch.argsort((~pruned_s).to(torch.int8), dim=1, stable=True)[:, :most]  # (rows, |P|max)
    extended = torch.block_diag(inverse[support][:, support],
                                torch.eye(most, dtype=inverse.dtype, device=inverse.device))  # (|S|+|P|, |S|+|P|)
    padded_weight = torch.cat([weight_s, weight_s.new_zeros(weight_s.shape[0], most)], dim=1)  # (rows, |S|+|P|max)
    coefficients = torch.zeros_like(padded_weight)  # x of each row at its pruned columns of S, 0 elsewhere
    # Rows in order of |P|, chunked, each chunk padded only to its own largest |P| (unstructured masks give rows
    # very different counts: padding all to the overall largest cost 3-6x the work on real layers).
    by_count = torch.argsort(counts, stable=True)
    for start in range(0, len(by_count), SOLVE_CHUNK_ROWS):
        rows_chunk = by_count[start:start + SOLVE_CHUNK_ROWS]
        chunk_most = int(counts[rows_chunk[-1]])
        if chunk_most == 0:
            continue
        slots = torch.arange(chunk_most, device=weight.device)
        index = torch.where(slots < counts[rows_chunk].unsqueeze(1), order[rows_chunk, :chunk_most],
                            width + slots)  # (c, |P|): pruned columns, then padding
        # x = R⁻¹ w_P with R = (H⁻¹)_PP per row (SPD; LU with pivoting: as stable here, and faster batched).
        system = torch.take(extended, index.unsqueeze(2) * extended.shape[1] + index.unsqueeze(1))  # (H⁻¹)_PP per row
        values = torch.gather(padded_weight[rows_chunk], 1, index)  # (c, |P|) = w_P per row
        solved = torch.linalg.solve(system, values.unsqueeze(2)).squeeze(2)
        coefficients[rows_chunk] = padded_weight.new_zeros(len(rows_chunk), width + most).scatter_(1, index, solved)
    coefficients = coefficients[:, :width]  # (rows, |S|)
    loss = 0.5 * float((coefficients * weight_s).sum())  # Σ_rows ½ x·w_P
    # δ_i = −x_i (H⁻¹)_P,:  =  −(x_i scattered to its columns) · H⁻¹, over the columns any row prunes.
    return -(coefficients @ inverse[support]), loss  # (rows, |S|) @ (|S|, d) -> (rows, d)


def _saliency(weight: torch.Tensor, inverse_diagonal: torch.Tensor) -> torch.Tensor:
    """OBS saliency of removing one weight alone: w_j² / [H⁻¹]_jj."""
    return weight.square() / inverse_diagonal.unsqueeze(0)


def nm_joint_mask(weight: torch.Tensor, inverse: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Kept mask: in each group g of M columns, prune the set P (|P| = M − N) of least ½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ.

    weight (rows × d), inverse = H⁻¹ over at least those d columns (its leading d × d block is used)."""
    rows, columns = weight.shape
    groups = columns // pattern.m
    choices = torch.tensor(list(itertools.combinations(range(pattern.m), pattern.m - pattern.n)),
                           device=weight.device)  # (C, k)
    starts = torch.arange(groups, device=weight.device).unsqueeze(1).unsqueeze(2) * pattern.m
    index = starts + choices.unsqueeze(0)  # (groups, C, k): the columns each choice prunes
    systems = inverse[index.unsqueeze(3), index.unsqueeze(2)]  # (groups, C, k, k) = (H⁻¹)_PP
    values = weight[:, index]  # (rows, groups, C, k) = w_P
    solved = torch.linalg.solve(systems.unsqueeze(0).expand(rows, -1, -1, -1, -1), values.unsqueeze(4))
    losses = 0.5 * (values * solved.squeeze(4)).sum(dim=3)  # (rows, groups, C)
    best = index[torch.arange(groups, device=weight.device).unsqueeze(0), losses.argmin(dim=2)]  # (rows, groups, k)
    mask = torch.ones_like(weight, dtype=torch.bool)
    return mask.scatter_(1, best.reshape(rows, -1), False)


def _select(weight: torch.Tensor, inverse: torch.Tensor, config: APTConfig, per_row: bool) -> torch.Tensor:
    """Kept mask: N of every M, else the lowest saliencies per row (row) or over the block (blockwise)."""
    if config.nm is not None and config.nm_selection == "joint":
        return nm_joint_mask(weight, inverse, config.nm)
    scores = _saliency(weight, torch.diagonal(inverse)[:weight.shape[1]])
    if config.nm is not None:
        return nm_mask(scores, config.nm)
    return row_mask(scores, config.target_sparsity) if per_row else matrix_mask(scores, config.target_sparsity)


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: APTConfig) -> LayerResult:
    rows, columns = weight.shape
    if config.nm is not None:
        check_nm_divisible(columns, config.nm)
    # float64 for the inverses and solves: the systems (H⁻¹)_PP can be ill-conditioned.
    hessian = damped_hessian(statistics.hessian.to(weight.device), config.damping).to(torch.float64)
    pruned = weight.to(torch.float64)
    if config.selection == "row":
        inverse = spd_inverse(hessian)
        mask = _select(pruned, inverse, config, per_row=True)
        delta, loss = joint_removal(pruned, ~mask, inverse)
        pruned = (pruned + delta) * mask
    else:
        mask = torch.ones_like(weight, dtype=torch.bool)
        loss = 0.0
        inverse = spd_inverse(hessian)  # (H over the columns not yet frozen)⁻¹
        for start in range(0, columns, config.blocksize):
            width = min(config.blocksize, columns - start)
            block_mask = _select(pruned[:, start:start + width], inverse, config, per_row=False)
            block_pruned = torch.zeros_like(pruned[:, start:], dtype=torch.bool)
            block_pruned[:, :width] = ~block_mask
            delta, block_loss = joint_removal(pruned[:, start:], block_pruned, inverse)
            pruned[:, start:] += delta
            pruned[:, start:start + width] *= block_mask
            mask[:, start:start + width] = block_mask
            loss += block_loss
            # Freeze the block: (H_22)⁻¹ = A_22 − A_21 A_11⁻¹ A_12 for A = (H over columns ≥ start)⁻¹.
            head, cross = inverse[:width, :width], inverse[:width, width:]
            inverse = inverse[width:, width:] - cross.t() @ torch.cholesky_solve(cross, torch.linalg.cholesky(head))
    result = pruned.to(weight.dtype)
    return LayerResult.measure(weight, result, mask, statistics, details={"loss": loss})


CONFIG = APTConfig  # the registry reads the method name and options from here
