"""The baselines on single layers with correlated inputs: exact sparsity, patterns, and error ordering."""

import pytest
import torch
from tiny_models import correlated_layer

from pruning.methods import magnitude, sparsegpt, wanda
from pruning.methods.base import InputStatistics, reconstruction_error
from pruning.methods.hessian import damped_hessian
from pruning.methods.masks import satisfies_nm


def test_statistics_give_sparsegpt_hessian_and_wanda_norms():
    weight, statistics, inputs = correlated_layer()
    assert torch.allclose(statistics.hessian, 2 / 16 * inputs.T @ inputs, rtol=1e-4)
    assert torch.allclose(statistics.squared_input_norms, (inputs**2).sum(0) / 16, rtol=1e-4)
    pruned = weight * (torch.rand_like(weight) > 0.5)
    direct = float(((inputs @ (weight - pruned).T) ** 2).sum())
    assert reconstruction_error(weight, pruned, statistics) == pytest.approx(direct, rel=1e-3)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7])
def test_wanda_prunes_the_asked_fraction_of_the_layer_every_row_within_one_weight(sparsity):
    weight, statistics, _ = correlated_layer()
    result = wanda.prune_layer(weight, statistics, wanda.WandaConfig(sparsity=sparsity))
    zeros_per_row = (result.weight == 0).sum(dim=1)
    assert int(zeros_per_row.sum()) == int(weight.numel() * sparsity)  # 0.3 of 64 columns is 19.2 per row
    assert int(zeros_per_row.max() - zeros_per_row.min()) <= (1 if sparsity * 64 % 1 else 0)
    assert torch.equal(result.weight, weight * result.mask)


def test_wanda_scores_weight_magnitude_times_input_norm():
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    inputs = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(10, 1)
    result = wanda.prune_layer(weight, InputStatistics.from_inputs(inputs), wanda.WandaConfig(sparsity=0.5))
    assert result.mask.tolist() == [[False, False, True, True]]


def test_magnitude_prunes_the_asked_fraction_of_the_matrix():
    weight, statistics, _ = correlated_layer()
    result = magnitude.prune_layer(weight, statistics, magnitude.MagnitudeConfig(sparsity=0.5))
    assert int((result.weight == 0).sum()) == weight.numel() // 2
    assert weight[~result.mask].abs().max() <= weight[result.mask].abs().min()


@pytest.mark.parametrize("method", [magnitude, wanda, sparsegpt])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_output_satisfies_the_pattern_in_every_group(method, pattern):
    weight, statistics, _ = correlated_layer()
    config_class = {magnitude: magnitude.MagnitudeConfig, wanda: wanda.WandaConfig,
                    sparsegpt: sparsegpt.SparseGPTConfig}[method]
    config = config_class(pattern=pattern)
    result = method.prune_layer(weight, statistics, config)
    assert satisfies_nm(result.weight, config.nm)
    n, m = config.nm.n, config.nm.m
    assert int((result.weight != 0).sum()) == weight.numel() * n // m


def test_sparsegpt_at_sparsity_zero_returns_the_weights_unchanged():
    weight, statistics, _ = correlated_layer()
    result = sparsegpt.prune_layer(weight, statistics, sparsegpt.SparseGPTConfig(sparsity=0.0))
    assert torch.equal(result.weight, weight)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_hits_the_asked_sparsity_in_every_column_block(sparsity):
    weight, statistics, _ = correlated_layer(rows=32, columns=256)
    result = sparsegpt.prune_layer(weight, statistics, sparsegpt.SparseGPTConfig(sparsity=sparsity, blocksize=64))
    for start in range(0, 256, 64):
        block_zeros = int((result.weight[:, start:start + 64] == 0).sum())
        assert block_zeros == int(32 * 64 * sparsity)


def naive_sequential_obs(weight, hessian, mask):
    """SparseGPT's update without lazy batching: prune column j, update every later column at once."""
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    upper = torch.linalg.cholesky(inverse, upper=True)
    pruned = weight.clone().double()
    upper = upper.double()
    for column in range(weight.shape[1]):
        error = pruned[:, column] * (~mask[:, column]) / upper[column, column]
        pruned[:, column:] -= error.unsqueeze(1) * upper[column, column:].unsqueeze(0)
        pruned[:, column] *= mask[:, column]
    return pruned.float()


def test_sparsegpt_lazy_block_updates_equal_the_naive_sequential_update():
    weight, statistics, _ = correlated_layer(rows=24, columns=96)
    config = sparsegpt.SparseGPTConfig(sparsity=0.5, blocksize=32)
    result = sparsegpt.prune_layer(weight, statistics, config)
    reference = naive_sequential_obs(weight, damped_hessian(statistics.hessian, 0.01), result.mask)
    assert torch.allclose(result.weight, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_layer_error_orders_sparsegpt_below_wanda_below_magnitude(pattern):
    weight, statistics, _ = correlated_layer()
    sparsity = 0.5 if pattern == "unstructured" else None
    errors = {module.__name__: module.prune_layer(weight, statistics, config).reconstruction_error
              for module, config in [(magnitude, magnitude.MagnitudeConfig(sparsity=sparsity, pattern=pattern)),
                                     (wanda, wanda.WandaConfig(sparsity=sparsity, pattern=pattern)),
                                     (sparsegpt, sparsegpt.SparseGPTConfig(sparsity=sparsity, pattern=pattern))]}
    assert errors["pruning.methods.sparsegpt"] < errors["pruning.methods.wanda"] < errors["pruning.methods.magnitude"]


def test_sparsegpt_handles_dead_inputs_without_nan():
    weight, _, inputs = correlated_layer()
    inputs[:, :5] = 0
    statistics = InputStatistics.from_inputs(inputs)
    result = sparsegpt.prune_layer(weight, statistics, sparsegpt.SparseGPTConfig(sparsity=0.5))
    assert torch.isfinite(result.weight).all()


def test_sparsity_config_rejects_bad_values_naming_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"sparsity must be in \[0, 1\)"):
        wanda.WandaConfig(sparsity=1.0)
    with pytest.raises(ValidationError, match="contradicts pattern 2:4"):
        wanda.WandaConfig(sparsity=0.6, pattern="2:4")
    with pytest.raises(ValidationError, match="blocksize 126 must be a multiple of M=4"):
        sparsegpt.SparseGPTConfig(pattern="2:4", blocksize=126)
