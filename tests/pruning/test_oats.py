"""OATS on single layers: Wanda as the κ = 0 case, exact parameter accounting, the fast SVD step."""

import math

import pytest
import torch
from pydantic import ValidationError
from tiny_models import correlated_layer

from pruning.methods import wanda
from pruning.methods.low_rank import full_truncated_svd, warm_truncated_svd
from pruning.methods.masks import NMPattern, satisfies_nm
from pruning.methods.oats import OATSConfig, oats_rank, prune_layer


@pytest.mark.parametrize("fields", [{"sparsity": 0.5}, {"sparsity": 0.75}, {"pattern": "2:4"}])
def test_rank_ratio_zero_is_exactly_wanda(fields):
    weight, statistics, _ = correlated_layer(rows=48, columns=64)
    result = prune_layer(weight, statistics, OATSConfig(rank_ratio=0.0, **fields))
    reference = wanda.prune_layer(weight, statistics, wanda.WandaConfig(**fields))
    assert torch.equal(result.mask, reference.mask)
    assert torch.equal(result.weight, reference.weight)
    assert result.factors is not None and result.factors.rank == 0


@pytest.mark.parametrize("shape", [(48, 64), (96, 40), (33, 70)])
@pytest.mark.parametrize("compression", [0.3, 0.5, 0.6])
@pytest.mark.parametrize("rank_ratio", [0.2, 0.3])
def test_kept_parameters_are_exactly_the_budget_unstructured(shape, compression, rank_ratio):
    rows, columns = shape
    weight, statistics, _ = correlated_layer(rows, columns, seed=rows)
    config = OATSConfig(sparsity=compression, rank_ratio=rank_ratio, iterations=5)
    result = prune_layer(weight, statistics, config)
    rank = math.floor(rank_ratio * (1 - compression) * rows * columns / (rows + columns))
    factors = result.factors
    assert factors is not None and factors.rank == rank == oats_rank(rows, columns, config)
    kept = int((factors.sparse != 0).sum()) + rank * (rows + columns)
    assert kept == factors.kept_parameters == math.floor((1 - compression) * rows * columns)
    per_row = (factors.sparse != 0).sum(dim=1)
    assert int(per_row.max() - per_row.min()) <= 1
    assert result.sparsity == pytest.approx(1 - kept / (rows * columns))
    assert torch.allclose(factors.sparse + factors.up @ factors.down, result.weight, atol=1e-5)


@pytest.mark.parametrize("pattern,rank_ratio", [("2:4", 0.3), ("2:8", 0.25), ("2:8", 0.5)])
def test_nm_sparse_term_follows_the_pattern_and_compression_is_reported(pattern, rank_ratio):
    rows, columns = 64, 96
    weight, statistics, _ = correlated_layer(rows, columns)
    result = prune_layer(weight, statistics, OATSConfig(pattern=pattern, rank_ratio=rank_ratio, iterations=5))
    nm = NMPattern.parse(pattern)
    assert result.factors is not None and satisfies_nm(result.factors.sparse, nm)
    assert int((result.factors.sparse != 0).sum()) == rows * columns * nm.n // nm.m
    rank = math.floor(rank_ratio / (1 - rank_ratio) * nm.n / nm.m * rows * columns / (rows + columns))
    assert result.factors.rank == rank
    # The paper's "2:8" at κ = 0.25 keeps (1/4)/(1 − κ) = 1/3 of the parameters: 67% compression, not 75%.
    expected = 1 - (rows * columns * nm.n // nm.m + rank * (rows + columns)) / (rows * columns)
    assert result.sparsity == pytest.approx(expected)
    assert result.sparsity == pytest.approx(1 - nm.n / nm.m / (1 - rank_ratio), abs=0.02)


def test_alternating_rounds_lower_the_scaled_objective_and_beat_wanda_on_low_rank_structure():
    # A weight that is low-rank plus a few large outliers, the structure OATS is built for.
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(64, 4, generator=generator) @ torch.randn(4, 96, generator=generator)
    outliers = torch.rand(64, 96, generator=generator) < 0.05
    weight = weight + outliers * torch.randn(64, 96, generator=generator) * 4
    _, statistics, _ = correlated_layer(64, 96)
    scale = statistics.squared_input_norms.sqrt()

    def objective(result):
        return float(torch.linalg.norm((weight - result.weight) * scale))

    one_round = prune_layer(weight, statistics, OATSConfig(sparsity=0.5, iterations=1))
    many_rounds = prune_layer(weight, statistics, OATSConfig(sparsity=0.5, iterations=40))
    assert objective(many_rounds) < objective(one_round)
    wanda_result = wanda.prune_layer(weight, statistics, wanda.WandaConfig(sparsity=0.5))
    assert many_rounds.reconstruction_error < 0.5 * wanda_result.reconstruction_error


def test_warm_started_subspace_svd_matches_the_full_svd_when_the_spectrum_has_a_gap():
    generator = torch.Generator().manual_seed(0)
    left, _ = torch.linalg.qr(torch.randn(120, 120, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(200, 120, generator=generator))
    values = torch.cat([torch.linspace(10, 5, 12), torch.linspace(1, 0.01, 108)])
    matrix = (left * values) @ right.t()
    nearby = matrix + 1e-2 * torch.randn(120, 200, generator=generator)
    previous = full_truncated_svd(nearby, 12)
    warm = warm_truncated_svd(matrix, previous, generator)
    reference = full_truncated_svd(matrix, 12)
    error = torch.linalg.norm(warm.matrix() - reference.matrix()) / torch.linalg.norm(reference.matrix())
    assert error < 1e-4
    assert torch.allclose(warm.values, reference.values, rtol=1e-4)


def test_tolerance_stops_early_and_reports_the_rounds_run():
    weight, statistics, _ = correlated_layer()
    result = prune_layer(weight, statistics, OATSConfig(sparsity=0.5, tolerance=1e-2))
    assert 2 <= result.details["iterations"] < 80
    assert prune_layer(weight, statistics, OATSConfig(sparsity=0.5, iterations=7)).details["iterations"] == 7


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="rank_ratio"):
        OATSConfig(sparsity=0.5, rank_ratio=1.0)
    with pytest.raises(ValidationError, match="contradicts pattern"):
        OATSConfig(sparsity=0.6, pattern="2:4")


def test_the_hessian_refit_lowers_the_layer_error_round_by_round_at_the_same_parameter_count():
    weight, statistics, _ = correlated_layer(48, 64)
    errors, kept = [], set()
    for rounds in (0, 1, 3):
        result = prune_layer(weight, statistics, OATSConfig(sparsity=0.5, iterations=10, hessian_refit=rounds))
        errors.append(result.reconstruction_error)
        kept.add(result.kept_parameters)
        assert torch.allclose(result.weight, result.factors.sparse + result.factors.up @ result.factors.down, atol=1e-5)
    assert errors[1] < 0.8 * errors[0] and errors[2] <= errors[1] * (1 + 1e-4)
    assert len(kept) == 1, "the refit keeps S's support and L's rank"
