"""Input statistics of one linear layer, and the result record every method returns.

For inputs x_t (t = 1..N tokens from n calibration sequences) the engine accumulates
  gram = Σ_t x_t x_tᵀ                  (fp32, d_in × d_in)
from which follow SparseGPT's Hessian  H = (2/n) · gram  and Wanda's  s_j = gram_jj / n.
The layer-wise reconstruction error of a new weight Ŵ is  ‖(W − Ŵ)X‖²_F = tr((W − Ŵ) gram (W − Ŵ)ᵀ).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Upper bound of every iteration-count option: far past each paper's setting (OATS 80 rounds, ADMM 30, a CG refit
# 200 steps, OSSCAR 20 swaps), so that a slip such as 10^12 is refused instead of running without end.
MAX_ROUNDS = 10_000
MAX_SEED = 2**63 - 1


class InputStatistics:
    """Running Σ x xᵀ over the calibration tokens that enter one group of linears."""

    def __init__(self, input_dim: int, device: torch.device | str = "cpu") -> None:
        self.gram = torch.zeros(input_dim, input_dim, dtype=torch.float32, device=device)
        self.num_sequences = 0
        self.num_tokens = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Accumulate a batch of inputs shaped (batch, seq, d_in) or (tokens, d_in)."""
        sequences = inputs.shape[0] if inputs.dim() == 3 else 1
        flat = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)
        self.gram.addmm_(flat.t(), flat)
        self.num_sequences += sequences
        self.num_tokens += flat.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """SparseGPT's H = (2/n) Σ x xᵀ, n = number of calibration sequences."""
        return self.gram * (2.0 / max(self.num_sequences, 1))

    @property
    def squared_input_norms(self) -> torch.Tensor:
        """Wanda's s_j = (1/n) Σ_t x_tj², the mean over sequences of each input's squared norm."""
        return torch.diagonal(self.gram) / max(self.num_sequences, 1)

    @classmethod
    def from_inputs(cls, inputs: torch.Tensor) -> InputStatistics:
        statistics = cls(inputs.shape[-1], inputs.device)
        statistics.add(inputs)
        return statistics


class PairedInputStatistics(InputStatistics):
    """Σ x xᵀ of the pruned model's inputs and the cross term Σ x_dense xᵀ with the dense model's inputs to the
    same linear on the same tokens (for fitting a layer to the dense model's outputs, see `dense_targets`)."""

    def __init__(self, input_dim: int, device: torch.device | str = "cpu") -> None:
        super().__init__(input_dim, device)
        self.cross = torch.zeros(input_dim, input_dim, dtype=torch.float32, device=device)

    def add_pair(self, inputs: torch.Tensor, dense_inputs: torch.Tensor) -> None:
        """Accumulate a batch of pruned-model inputs and the dense model's inputs on the same tokens."""
        self.add(inputs)
        pruned = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)
        dense = dense_inputs.reshape(-1, dense_inputs.shape[-1]).to(torch.float32)
        self.cross.addmm_(dense.t(), pruned)


def reconstruction_error(original: torch.Tensor, pruned: torch.Tensor, statistics: InputStatistics) -> float:
    """‖(W − Ŵ)X‖²_F = tr(Δ gram Δᵀ) with Δ = W − Ŵ."""
    delta = (original - pruned).to(statistics.gram.dtype)
    return float(((delta @ statistics.gram) * delta).sum())


@dataclass
class SparseLowRank:
    """A weight kept as Ŵ = S + U·V: a sparse term (zeros stored, d_out × d_in) and rank-r factors."""

    sparse: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.up.shape[1])

    @property
    def kept_parameters(self) -> int:
        """Nonzeros of S plus the r·(d_out + d_in) entries of the factors."""
        return int((self.sparse != 0).sum()) + self.up.numel() + self.down.numel()

    def to(self, device: torch.device | str) -> SparseLowRank:
        return SparseLowRank(self.sparse.to(device), self.up.to(device), self.down.to(device))


@dataclass
class LayerResult:
    """What a method returns for one linear: the new weight, its mask, and the layer's error.

    `factors` is set by methods whose result is sparse + low-rank (`weight` is then the merged S + U·V);
    `details` holds small per-layer facts a method wants reported (rank, iterations run, ...).
    """

    weight: torch.Tensor
    mask: torch.Tensor
    reconstruction_error: float | None
    relative_error: float | None
    factors: SparseLowRank | None = None
    details: dict[str, float] = field(default_factory=dict)

    @classmethod
    def measure(cls, original: torch.Tensor, pruned: torch.Tensor, mask: torch.Tensor,
                statistics: InputStatistics | None, factors: SparseLowRank | None = None,
                details: dict[str, float] | None = None) -> LayerResult:
        """Build the result, computing ‖(W−Ŵ)X‖² and its ratio to ‖WX‖² (None for a data-free method)."""
        if statistics is None:
            return cls(pruned, mask, None, None, factors, details or {})
        error = reconstruction_error(original, pruned, statistics)
        signal = float(((original @ statistics.gram) * original).sum())
        return cls(pruned, mask, error, error / signal if signal > 0 else 0.0, factors, details or {})

    @property
    def kept_parameters(self) -> int:
        return self.factors.kept_parameters if self.factors is not None else int((self.weight != 0).sum())

    @property
    def sparsity(self) -> float:
        """Fraction of the layer's parameters removed (a low-rank term's factor entries count as kept)."""
        return 1.0 - self.kept_parameters / self.weight.numel()
