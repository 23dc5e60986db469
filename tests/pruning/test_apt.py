"""APT on single layers: the joint removal is the least-squares refit, its loss is the layer error."""

import itertools

import pytest
import torch
from pydantic import ValidationError
from tiny_models import correlated_layer

from pruning.methods import sparsegpt
from pruning.methods.apt import APTConfig, joint_removal, nm_joint_mask, prune_layer
from pruning.methods.base import reconstruction_error
from pruning.methods.hessian import damped_hessian
from pruning.methods.masks import NMPattern, satisfies_nm


@pytest.mark.parametrize("rows", [48, 160])  # one batch of rows, and three of them (SOLVE_CHUNK_ROWS = 64)
def test_joint_removal_on_a_fixed_mask_is_the_least_squares_refit_and_its_loss_the_error(rows):
    weight, statistics, _ = correlated_layer(rows=rows)
    # Rows prune from none to most of their columns (batches pad to different sizes); column 5 is never pruned.
    keep_share = torch.linspace(1.0, 0.1, rows).unsqueeze(1)
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) < keep_share
    mask[:, 5] = True
    mask = mask[torch.randperm(rows, generator=torch.Generator().manual_seed(2))]  # counts not in row order
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(statistics.hessian.double()))
    delta, loss = joint_removal(weight.double(), ~mask, inverse)
    refit = (weight.double() + delta) * mask
    assert float(delta[~mask].add(weight.double()[~mask]).abs().max()) < 1e-9  # pruned weights land on zero
    hessian = statistics.hessian.double()
    for row in range(weight.shape[0]):
        kept = mask[row]
        # The least-squares refit on the kept support: w_K = H_KK⁻¹ (H w)_K (the normal equations of ‖(w − ŵ)X‖²).
        solution = torch.linalg.solve(hessian[kept][:, kept], (hessian @ weight[row].double())[kept])
        assert float(torch.linalg.norm(refit[row, kept] - solution) / torch.linalg.norm(solution)) < 1e-8
    # ½ δHδᵀ with H = (2/n)·Σxxᵀ is (1/n)·‖(W − Ŵ)X‖².
    error = reconstruction_error(weight, refit.float(), statistics)
    assert loss * statistics.num_sequences == pytest.approx(error, rel=1e-4)


@pytest.mark.parametrize("selection", ["blockwise", "row"])
@pytest.mark.parametrize("fields", [{"sparsity": 0.5}, {"sparsity": 0.7}, {"pattern": "2:4"}])
def test_reported_loss_is_the_layer_error(selection, fields):
    weight, statistics, _ = correlated_layer()
    result = prune_layer(weight, statistics, APTConfig(selection=selection, damping=0.0, blocksize=16, **fields))
    assert result.details["loss"] * statistics.num_sequences == pytest.approx(result.reconstruction_error, rel=1e-3)
    assert torch.equal(result.weight != 0, result.mask)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_on_sparsegpts_mask_the_joint_solve_is_no_worse_than_sparsegpt(pattern):
    weight, statistics, _ = correlated_layer()
    fields = {"pattern": pattern, **({"sparsity": 0.6} if pattern == "unstructured" else {})}
    reference = sparsegpt.prune_layer(weight, statistics, sparsegpt.SparseGPTConfig(**fields))
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(damped_hessian(statistics.hessian, 0.01).double()))
    delta, _ = joint_removal(weight.double(), ~reference.mask, inverse)
    joint = ((weight.double() + delta) * reference.mask).float()
    assert reconstruction_error(weight, joint, statistics) <= reference.reconstruction_error * (1 + 1e-6)


@pytest.mark.parametrize("selection", ["blockwise", "row"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_output_satisfies_the_pattern_exactly(selection, pattern):
    weight, statistics, _ = correlated_layer()
    result = prune_layer(weight, statistics, APTConfig(selection=selection, pattern=pattern, blocksize=32))
    nm = NMPattern.parse(pattern)
    assert satisfies_nm(result.weight, nm)
    assert int((result.weight != 0).sum()) == weight.numel() * nm.n // nm.m


@pytest.mark.parametrize("selection", ["blockwise", "row"])
@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7])
def test_unstructured_sparsity_is_the_asked_fraction(selection, sparsity):
    weight, statistics, _ = correlated_layer(seed=2)
    result = prune_layer(weight, statistics, APTConfig(sparsity=sparsity, selection=selection, blocksize=32))
    zeros = int((result.weight == 0).sum())
    if selection == "row":  # the rows drop ⌊d_in·p⌋ or one more, ⌊numel·p⌋ in all, as Wanda
        assert zeros == int(weight.numel() * sparsity)
    else:  # every block drops ⌊block size·rows·p⌋, as SparseGPT
        assert zeros == 2 * int(32 * weight.shape[0] * sparsity)


def test_blocksize_must_hold_whole_nm_groups():
    with pytest.raises(ValidationError, match="blocksize"):
        APTConfig(pattern="2:8", blocksize=12)


def test_apt_and_sparsegpt_prune_a_tiny_mamba_including_the_directly_multiplied_dt_proj():
    from tiny_models import random_ids, tiny_model

    from pruning.config import EngineConfig
    from pruning.engine import prune_model
    from pruning.methods.sparsegpt import SparseGPTConfig
    from pruning.models.architectures import adapter_for

    for config in (APTConfig(sparsity=0.5), SparseGPTConfig(sparsity=0.5)):
        model = tiny_model("mamba")
        report = prune_model(model, random_ids(), config, EngineConfig(forward_dtype="float32"))
        adapter = adapter_for(model)
        names = {layer.name.rsplit(".", 2)[-2] + "." + layer.name.rsplit(".", 1)[-1] for layer in report.layers}
        assert names == {"mixer.in_proj", "mixer.x_proj", "mixer.dt_proj", "mixer.out_proj"}
        for layer in report.layers:
            assert layer.sparsity == pytest.approx(0.5) and 0 < layer.relative_error < 1, layer
        dt_proj = adapter.read_weight(adapter.blocks(model)[1].get_submodule("mixer.dt_proj"))
        assert float((dt_proj == 0).float().mean()) == pytest.approx(0.5)
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=random_ids(2, 16)).logits).all()


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_joint_nm_selection_prunes_each_group_by_its_least_multiple_removal_loss(pattern):
    weight, statistics, _ = correlated_layer(rows=6, columns=16)
    nm = NMPattern.parse(pattern)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(damped_hessian(statistics.hessian, 0.01).double()))
    mask = nm_joint_mask(weight.double(), inverse, nm)
    assert satisfies_nm(mask.double(), nm) and int(mask.sum()) == weight.numel() * nm.n // nm.m
    for row in range(weight.shape[0]):
        for start in range(0, 16, nm.m):
            losses = {}
            for pruned in itertools.combinations(range(start, start + nm.m), nm.m - nm.n):
                chosen = list(pruned)
                values = weight.double()[row, chosen]
                losses[pruned] = float(values @ torch.linalg.solve(inverse[chosen][:, chosen], values))
            best = min(losses, key=losses.get)
            assert tuple(int(column) for column in torch.nonzero(~mask[row, start:start + nm.m]).flatten() + start) \
                == best


def test_joint_nm_selection_runs_end_to_end_in_both_modes():
    weight, statistics, _ = correlated_layer()
    for selection in ("blockwise", "row"):
        config = APTConfig(pattern="2:4", selection=selection, nm_selection="joint", blocksize=16)
        result = prune_layer(weight, statistics, config)
        assert satisfies_nm(result.weight, config.nm)
        assert result.details["loss"] > 0
