"""The best rank-r approximation of a matrix: full SVD, or warm-started subspace iteration.

Eckart–Young: SVD_r(A) = U_r Σ_r V_rᵀ minimises ‖A − L‖_F over rank(L) ≤ r. Only the top r singular
triplets are needed, so for r ≪ min(d_out, d_in) a randomized range finder is much cheaper:
  Q = orth(A Ω),  Q ← orth(A Aᵀ Q) (q power steps),  B = Qᵀ A = Û Σ Vᵀ,  U = Q Û
costing O(d_out·d_in·(r+p)) per step instead of O(d_out·d_in·min(d_out, d_in)). When A changes little
between calls (alternating thresholding), Ω = [V_prev | p random columns] starts in the right subspace.
On a flat spectrum (no gap at r) a few steps are not enough: start such a sequence with a full SVD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TruncatedSVD:
    """U (d_out × r), singular values (r), Vh (r × d_in)."""

    left: torch.Tensor
    values: torch.Tensor
    right: torch.Tensor

    def matrix(self) -> torch.Tensor:
        return (self.left * self.values) @ self.right


def full_truncated_svd(matrix: torch.Tensor, rank: int) -> TruncatedSVD:
    """The exact top-r triplets from a full thin SVD (the reference)."""
    left, values, right = torch.linalg.svd(matrix, full_matrices=False)
    return TruncatedSVD(left[:, :rank], values[:rank], right[:rank])


def warm_truncated_svd(matrix: torch.Tensor, previous: TruncatedSVD, generator: torch.Generator,
                       oversampling: int = 8, power_iterations: int = 1) -> TruncatedSVD:
    """Top-r triplets (r = previous rank) by subspace iteration started from `previous`'s right vectors.

    Accurate when the spectrum has a gap at r and `previous` came from a nearby matrix; a cold start
    on a flat spectrum is not (take a full SVD first). `generator` (on the matrix's device) makes the
    extra random columns reproducible.
    """
    rank = previous.right.shape[0]
    width = min(rank + oversampling, *matrix.shape)
    random = torch.randn(matrix.shape[1], width - rank, generator=generator, device=matrix.device, dtype=matrix.dtype)
    basis = torch.linalg.qr(matrix @ torch.cat([previous.right.t(), random], dim=1)).Q
    for _ in range(power_iterations):
        # Q ← orth(A · orth(Aᵀ Q)): re-orthonormalise both ways to keep small singular directions.
        basis = torch.linalg.qr(matrix @ torch.linalg.qr(matrix.t() @ basis).Q).Q
    small_left, values, right = torch.linalg.svd(basis.t() @ matrix, full_matrices=False)
    return TruncatedSVD((basis @ small_left)[:, :rank], values[:rank], right[:rank])
