"""SparseGPT (Frantar & Alistarh, ICML 2023): one-shot OBS pruning with lazy block updates.

Columns are processed left to right in blocks of B. Pruning w_j (row-wise error e = w_j / U_jj)
is compensated on the not-yet-processed columns of the block,  W[:, j:] −= e ⊗ U[j, j:],
and each finished block updates all later columns at once,  W[:, i2:] −= E · U[i1:i2, i2:].
The unstructured mask is chosen once per block, jointly over rows, by the saliency w²/[H⁻¹]_jj = w²/U_jj².
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from pruning.errors import ConfigError
from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.hessian import damped_hessian, inverse_cholesky_upper
from pruning.methods.masks import check_nm_divisible, matrix_mask, nm_mask
from pruning.methods.sparsity import SparsityConfig


class SparseGPTConfig(SparsityConfig):
    method: Literal["sparsegpt"] = "sparsegpt"
    blocksize: int = Field(128, gt=0, description="columns per lazy-update block")
    damping: float = Field(0.01, ge=0.0, description="λ in H + λ·mean(diag H)·I")

    @model_validator(mode="after")
    def _blocks_hold_whole_groups(self) -> SparseGPTConfig:
        if self.nm is not None and self.blocksize % self.nm.m:
            raise ConfigError(f"blocksize {self.blocksize} must be a multiple of M={self.nm.m} "
                             f"for pattern {self.pattern}")
        return self


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: SparseGPTConfig) -> LayerResult:
    rows, columns = weight.shape
    pattern = config.nm
    if pattern is not None:
        check_nm_divisible(columns, pattern)
    upper = inverse_cholesky_upper(damped_hessian(statistics.hessian, config.damping))  # U, (d_in, d_in)
    pruned = weight.clone()
    mask = torch.ones_like(weight, dtype=torch.bool)
    for start in range(0, columns, config.blocksize):
        end = min(start + config.blocksize, columns)
        block = pruned[:, start:end].clone()  # contiguous: the column loop below updates it in place
        block_upper = upper[start:end, start:end]  # (B, B)
        denominators = torch.diagonal(block_upper)  # (B,) = U_jj
        errors = torch.zeros_like(block)  # (rows, B): e per column
        if pattern is None:
            block_mask = matrix_mask(block.square() / denominators.square(), config.target_sparsity)
        else:
            block_mask = torch.ones_like(block, dtype=torch.bool)
        for column in range(end - start):
            if pattern is not None and column % pattern.m == 0:
                group = slice(column, column + pattern.m)
                block_mask[:, group] = nm_mask(block[:, group].square() / denominators[group].square(), pattern)
            kept = block[:, column] * block_mask[:, column]
            error = (block[:, column] - kept) / denominators[column]
            block[:, column:].addr_(error, block_upper[column, column:], alpha=-1)  # (rows,) ⊗ (B − j,)
            block[:, column] = kept
            errors[:, column] = error
        pruned[:, start:end] = block
        mask[:, start:end] = block_mask
        pruned[:, end:] -= errors @ upper[start:end, end:]  # (rows, B) @ (B, d_in − end)
    return LayerResult.measure(weight, pruned, mask, statistics)


CONFIG = SparseGPTConfig  # the registry reads the method name and options from here
