"""Fitting a layer to the dense model's outputs rather than to its own (pruned-model) inputs.

With X_d the dense model's inputs to a linear and X_p the pruned model's inputs on the same tokens
(columns are tokens), the dense-target layer problem is
  min_Ŵ ‖W X_d − Ŵ X_p‖²_F   subject to the method's pattern.
Its unconstrained optimum is W* = W C G⁻¹ with C = X_d X_pᵀ and G = X_p X_pᵀ, and the residual W X_d − W* X_p is
orthogonal to the rows of X_p, so for every Ŵ
  ‖W X_d − Ŵ X_p‖² = ‖W X_d − W* X_p‖² + ‖(W* − Ŵ) X_p‖².
Any method that minimises ‖(W − Ŵ)X‖² with X = X_p therefore solves the dense-target problem when given W* as
its weight: the engine hands it W* and the pruned inputs' statistics, and nothing else changes.

G can be ill-conditioned, so the solve is ridged; the ridge acts on the correction only,
  W* = W + W (C − G)(G + λ·mean(diag G)·I)⁻¹,   C − G = Σ (x_d − x_p) x_pᵀ,
which is W C G⁻¹ without the ridge and exactly W where the two models' inputs agree (ridging W C G⁻¹ itself would
shrink W along G's weak directions even then).
"""

from __future__ import annotations

import torch

from pruning.methods.base import PairedInputStatistics
from pruning.methods.hessian import damped_hessian

# Relative ridge on G (λ·mean(diag G)), the damping the second-order methods use.
DAMPING = 0.01


def dense_target_weight(weight: torch.Tensor, statistics: PairedInputStatistics,
                        damping: float = DAMPING) -> torch.Tensor:
    """W* = W + W (C − G)(G + λ·mean(diag G)·I)⁻¹, C = Σ x_d x_pᵀ, G = Σ x_p x_pᵀ (weight: d_out × d_in)."""
    gram = statistics.gram.to(torch.float64)
    original = weight.to(torch.float64)
    # (W*− W)ᵀ = G_λ⁻¹ (C − G)ᵀ Wᵀ, solved through the Cholesky factor of the (symmetric) ridged G.
    right = (statistics.cross.to(torch.float64) - gram).t() @ original.t()
    correction = torch.cholesky_solve(right, torch.linalg.cholesky(damped_hessian(gram, damping)))
    return (original + correction.t()).to(weight.dtype)
