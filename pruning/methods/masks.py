"""Sparsity patterns and the mask selections shared by the methods.

Masks are boolean with True = weight kept. "N:M" follows NVIDIA's convention: at most N nonzeros in
every group of M consecutive input weights (2:4 keeps 2 of every 4).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from pruning.errors import ConfigError

_NM_PATTERN = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class NMPattern:
    """Keep at most `n` weights in every group of `m` consecutive input weights."""

    n: int
    m: int

    @classmethod
    def parse(cls, text: str) -> NMPattern:
        match = _NM_PATTERN.match(text.strip())
        if match is None:
            raise ConfigError(f"pattern '{text}' is neither 'unstructured' nor N:M such as 2:4")
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise ConfigError(f"pattern '{text}': N must satisfy 0 < N < M (N weights kept of every M), e.g. 2:4")
        return cls(n, m)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per output row, drop its lowest scores: floor(numel·s) in all, floor(·/d_out) per row and one more in the rows
    where that next weight scores lowest, so the matrix loses exactly its share even when s·d_in is not whole."""
    rows, columns = scores.shape
    pruned_per_row, extra = divmod(math.floor(rows * columns * sparsity), rows) if rows else (0, 0)
    kept_per_row = torch.full((rows,), columns - pruned_per_row, dtype=torch.long)
    if extra:
        # Cost of one more removal in a row: its (pruned_per_row + 1)-th lowest score.
        next_lowest = torch.kthvalue(scores, pruned_per_row + 1, dim=1).values
        kept_per_row[torch.topk(next_lowest, extra, largest=False).indices.cpu()] -= 1
    return row_count_mask(scores, kept_per_row)


def row_count_mask(scores: torch.Tensor, kept_per_row: torch.Tensor) -> torch.Tensor:
    """Per output row i, keep the kept_per_row[i] highest scores (counts may differ by at most one)."""
    kept_per_row = kept_per_row.to(scores.device)
    most = int(kept_per_row.max()) if kept_per_row.numel() else 0
    values, indices = torch.topk(scores, most, dim=1, sorted=False)
    keep = torch.ones_like(values, dtype=torch.bool)
    short = torch.nonzero(kept_per_row < most).squeeze(1)
    if short.numel() and most:
        # Rows that keep one fewer drop the lowest of their selected scores.
        keep[short, values[short].argmin(dim=1)] = False
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, indices, keep)


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Over the whole matrix, drop the floor(numel * sparsity) lowest scores (ties: the first ones in row-major
    order, as a stable sort would), found by a selection rather than a sort."""
    pruned = math.floor(scores.numel() * sparsity)
    flat = scores.flatten()
    mask = torch.ones_like(flat, dtype=torch.bool)
    if pruned:
        threshold = torch.kthvalue(flat, pruned).values  # the pruned-th lowest score
        below = flat < threshold
        ties = torch.nonzero(flat == threshold).flatten()[: pruned - int(below.sum())]
        mask &= ~below
        mask[ties] = False
    return mask.view_as(scores)


def nm_mask(scores: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """In every group of M consecutive input columns of each row, keep the N highest scores."""
    rows, columns = scores.shape
    check_nm_divisible(columns, pattern)
    grouped = scores.reshape(rows, columns // pattern.m, pattern.m)
    keep = torch.topk(grouped, pattern.n, dim=2).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(2, keep, True)
    return mask.reshape(rows, columns)


def check_nm_divisible(columns: int, pattern: NMPattern) -> None:
    if columns % pattern.m:
        raise ConfigError(f"pattern {pattern}: a layer has {columns} input columns, not a multiple of M={pattern.m}; "
                         "add it to skip_layers or choose an M that divides it")


def satisfies_nm(weight: torch.Tensor, pattern: NMPattern) -> bool:
    """True when every group of M consecutive input weights holds at most N nonzeros."""
    rows, columns = weight.shape
    nonzeros = (weight != 0).reshape(rows, columns // pattern.m, pattern.m).sum(dim=2)
    return bool((nonzeros <= pattern.n).all())
