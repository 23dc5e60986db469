"""Damped inverse Hessians, shared by the second-order methods."""

from __future__ import annotations

import torch


def damped_hessian(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """H + λ·mean(diag H)·I, with dead inputs (H_jj = 0) given H_jj = 1 so that H stays invertible."""
    damped = hessian.clone()
    diagonal = torch.diagonal(damped)
    diagonal[diagonal == 0] = 1.0
    diagonal += damping * diagonal.mean()
    return damped


def spd_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """A⁻¹ of a symmetric positive definite A, through its Cholesky factor."""
    return torch.cholesky_inverse(torch.linalg.cholesky(matrix))


def inverse_cholesky_upper(hessian: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU).

    U_jj² = [(H_{j:, j:})⁻¹]_jj: the OBS denominator of column j once columns < j are fixed.
    """
    return torch.linalg.cholesky(spd_inverse(hessian), upper=True)
