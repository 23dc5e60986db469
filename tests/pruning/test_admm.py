"""ADMM with a gradual mask on single layers: lower error than SparseGPT, the pattern exactly, the exact refit."""

import math

import pytest
import torch
from pydantic import ValidationError
from tiny_models import correlated_layer

from pruning.methods.admm import ADMMConfig, prune_layer, round_mask, scheduled_sparsity
from pruning.methods.apt import joint_removal
from pruning.methods.hessian import damped_hessian, spd_inverse
from pruning.methods.masks import nm_mask, satisfies_nm
from pruning.methods.sparsegpt import SparseGPTConfig
from pruning.methods.sparsegpt import prune_layer as sparsegpt_layer


@pytest.mark.parametrize("fields", [{"sparsity": 0.5}, {"sparsity": 0.7}, {"pattern": "2:4"}])
def test_admm_beats_sparsegpt_layer_error_on_a_random_correlated_layer(fields):
    weight, statistics, _ = correlated_layer(64, 128, 4096)
    admm = prune_layer(weight, statistics, ADMMConfig(**fields))
    baseline = sparsegpt_layer(weight, statistics, SparseGPTConfig(**fields))
    assert admm.reconstruction_error < 0.9 * baseline.reconstruction_error


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.33])
def test_the_layer_loses_exactly_its_share_the_rows_within_one_weight(sparsity):
    weight, statistics, _ = correlated_layer()
    result = prune_layer(weight, statistics, ADMMConfig(sparsity=sparsity))
    zeros_per_row = (result.weight == 0).sum(dim=1)
    assert int(zeros_per_row.sum()) == int(weight.numel() * sparsity)
    assert int(zeros_per_row.max() - zeros_per_row.min()) <= 1
    assert torch.equal(result.weight != 0, result.mask)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_holds_in_every_group(pattern):
    weight, statistics, _ = correlated_layer()
    config = ADMMConfig(pattern=pattern)
    result = prune_layer(weight, statistics, config)
    assert satisfies_nm(result.weight, config.nm)
    assert int((result.weight != 0).sum()) == weight.numel() * config.nm.n // config.nm.m


def test_kept_weights_are_the_exact_least_squares_refit_on_the_final_mask():
    weight, statistics, _ = correlated_layer()
    config = ADMMConfig(sparsity=0.5, refit_tolerance=1e-7)
    result = prune_layer(weight, statistics, config)
    hessian = damped_hessian(statistics.hessian, config.damping).double()
    delta, _ = joint_removal(weight.double(), ~result.mask, spd_inverse(hessian))
    assert torch.allclose(result.weight.double(), (weight.double() + delta) * result.mask, atol=1e-5)


def test_the_default_refit_tolerance_reaches_the_exact_refits_error():
    weight, statistics, _ = correlated_layer()
    exact = prune_layer(weight, statistics, ADMMConfig(sparsity=0.5, refit_tolerance=1e-7))
    default = prune_layer(weight, statistics, ADMMConfig(sparsity=0.5))
    assert torch.equal(default.mask, exact.mask)
    assert default.details["refit_steps"] < exact.details["refit_steps"]
    assert default.reconstruction_error == pytest.approx(exact.reconstruction_error, rel=1e-5)


def test_the_schedule_rises_cubically_to_the_target_and_stays():
    levels = [scheduled_sparsity(0.6, index, 10) for index in range(14)]
    assert all(earlier < later for earlier, later in zip(levels[:9], levels[1:10], strict=True))
    assert levels[9:] == [pytest.approx(0.6)] * 5
    assert levels[0] == pytest.approx(0.6 * (1 - 0.9**3))


def test_a_schedule_longer_than_the_rounds_is_refused_naming_both():
    with pytest.raises(ValidationError, match="mask_iterations 40 exceeds iterations 30"):
        ADMMConfig(sparsity=0.5, iterations=30, mask_iterations=40)


def test_the_refit_reports_whether_it_converged():
    weight, statistics, _ = correlated_layer()
    assert prune_layer(weight, statistics, ADMMConfig(sparsity=0.5)).details["refit_converged"] == 1.0
    cut_short = prune_layer(weight, statistics, ADMMConfig(sparsity=0.5, refit_iterations=1))
    assert cut_short.details == {"refit_steps": 1.0, "refit_converged": 0.0}


@pytest.mark.parametrize("fields", [{"mask_scope": "matrix"}, {"mask_scope": "matrix", "row_floor": 0.5},
                                    {"mask_scope": "matrix", "row_floor": 1.0}])
@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.37])
def test_a_matrix_mask_removes_exactly_its_share_and_keeps_each_rows_floor(fields, sparsity):
    weight, statistics, _ = correlated_layer()
    config = ADMMConfig(sparsity=sparsity, **fields)
    result = prune_layer(weight, statistics, config)
    assert int((~result.mask).sum()) == math.floor(weight.numel() * sparsity)
    assert torch.equal(result.weight != 0, result.mask)
    kept_total = weight.numel() - math.floor(weight.numel() * sparsity)
    floor_count = math.floor(config.row_floor * kept_total / weight.shape[0])
    assert int(result.mask.sum(dim=1).min()) >= floor_count


def test_a_matrix_mask_gives_rows_uneven_shares_and_fits_the_layer_no_worse_than_per_row():
    weight, statistics, _ = correlated_layer()
    row = prune_layer(weight, statistics, ADMMConfig(sparsity=0.5))
    matrix = prune_layer(weight, statistics, ADMMConfig(sparsity=0.5, mask_scope="matrix"))
    assert len(set(row.mask.sum(dim=1).tolist())) == 1
    assert len(set(matrix.mask.sum(dim=1).tolist())) > 1
    assert matrix.reconstruction_error < row.reconstruction_error


@pytest.mark.parametrize("fields, message", [
    ({"sparsity": 0.5, "row_floor": 0.5}, "row_floor 0.5 applies to mask_scope matrix only"),
    ({"pattern": "2:4", "mask_scope": "matrix"}, "mask_scope matrix is for unstructured sparsity"),
    ({"sparsity": 0.5, "mask_scope": "matrix", "row_floor": 1.5}, "row_floor"),
])
def test_contradictory_mask_options_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValidationError, match=message):
        ADMMConfig(**fields)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_the_gradual_nm_schedule_ends_exactly_nm_and_prunes_gradually_before(pattern):
    weight, statistics, _ = correlated_layer()
    config = ADMMConfig(pattern=pattern)
    result = prune_layer(weight, statistics, config)
    assert satisfies_nm(result.weight, config.nm)
    assert int(result.mask.sum()) == weight.numel() * config.nm.n // config.nm.m
    # An early round keeps each group's top N and more: a share s_k of the matrix, never a group's top N.
    values = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))
    early = round_mask(values, config, 0.1)
    assert int((~early).sum()) == math.floor(values.numel() * 0.1)
    assert bool(early[nm_mask(values.abs(), config.nm)].all())
