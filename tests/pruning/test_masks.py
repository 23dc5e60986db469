import pytest
import torch

from pruning.methods.masks import NMPattern, matrix_mask, nm_mask, row_mask, satisfies_nm


def test_nm_pattern_rejects_n_not_below_m():
    with pytest.raises(ValueError, match="0 < N < M"):
        NMPattern.parse("4:4")
    with pytest.raises(ValueError, match="unstructured"):
        NMPattern.parse("2-4")


def test_nm_mask_keeps_the_n_largest_of_every_m_consecutive_inputs():
    scores = torch.rand(16, 32, generator=torch.Generator().manual_seed(0))
    for pattern in (NMPattern(2, 4), NMPattern(4, 8), NMPattern(1, 3)):
        columns = 30 if pattern.m == 3 else 32
        mask = nm_mask(scores[:, :columns], pattern)
        grouped = mask.reshape(16, columns // pattern.m, pattern.m)
        assert (grouped.sum(dim=2) == pattern.n).all()
        kept_min = torch.where(grouped, scores[:, :columns].reshape_as(grouped), torch.inf).amin(dim=2)
        dropped_max = torch.where(~grouped, scores[:, :columns].reshape_as(grouped), -torch.inf).amax(dim=2)
        assert (kept_min >= dropped_max).all()
        assert satisfies_nm(scores[:, :columns] * mask, pattern)


def test_nm_mask_rejects_columns_not_divisible_by_m():
    with pytest.raises(ValueError, match="multiple of M=4"):
        nm_mask(torch.rand(2, 6), NMPattern(2, 4))


def cut_by_score(scores, mask):
    """Within every row, each dropped score lies below each kept one."""
    dropped_max = scores.masked_fill(mask, float("-inf")).max(dim=1).values
    kept_min = scores.masked_fill(~mask, float("inf")).min(dim=1).values
    return bool((dropped_max < kept_min).all())


def test_row_mask_drops_the_same_count_in_every_row_when_it_is_whole():
    scores = torch.rand(8, 10)
    mask = row_mask(scores, 0.5)
    assert ((~mask).sum(dim=1) == 5).all()
    assert cut_by_score(scores, mask)


def test_row_mask_removes_exactly_floor_of_numel_times_sparsity_one_more_where_it_costs_least():
    scores = torch.rand(8, 10) + 1.0
    cheap = [2, 5, 6, 7]
    scores[cheap, :6] = torch.rand(4, 6) * 0.1  # in these rows a sixth removal costs far less than anywhere else
    mask = row_mask(scores, 0.55)  # floor(80 * 0.55) = 44: 5 per row, and a sixth in 4 rows
    pruned = (~mask).sum(dim=1)
    assert int(pruned.sum()) == 44
    assert torch.nonzero(pruned == 6).flatten().tolist() == cheap and (pruned[pruned != 6] == 5).all()
    assert cut_by_score(scores, mask)


def test_matrix_mask_drops_exactly_floor_of_numel_times_sparsity():
    scores = torch.rand(7, 9)
    mask = matrix_mask(scores, 0.5)
    assert int((~mask).sum()) == 31
    assert scores[~mask].max() <= scores[mask].min()
