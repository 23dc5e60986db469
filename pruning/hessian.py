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


def inverse_cholesky_upper(hessian: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU).

    U_jj² = [(H_{j:, j:})⁻¹]_jj: the OBS denominator of column j once columns < j are fixed.
    """
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    return torch.linalg.cholesky(inverse, upper=True)
