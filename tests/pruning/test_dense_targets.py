"""Dense targets: W* = W C G⁻¹ is the least-squares map, the objective splits around it, the engine uses it."""

import copy

import pytest
import torch
from tiny_models import random_ids, tiny_model

from pruning.blocks.dense_targets import dense_target_weight
from pruning.config import EngineConfig
from pruning.engine import prune_model
from pruning.methods.base import PairedInputStatistics
from pruning.methods.sparsegpt import SparseGPTConfig
from pruning.methods.sparsegpt import prune_layer as sparsegpt_layer

FP32 = EngineConfig(forward_dtype="float32", batch_size=4)


def paired_layer(seed: int = 0, rows: int = 24, columns: int = 32, tokens: int = 512):
    generator = torch.Generator().manual_seed(seed)
    dense = torch.randn(tokens, columns, generator=generator, dtype=torch.float64)
    pruned = dense + 0.3 * torch.randn(tokens, columns, generator=generator, dtype=torch.float64)  # drifted
    weight = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    statistics = PairedInputStatistics(columns)
    statistics.add_pair(pruned.float().reshape(8, -1, columns), dense.float().reshape(8, -1, columns))
    return weight, statistics, dense, pruned


def test_the_target_weight_is_the_least_squares_map_from_pruned_to_dense_outputs():
    weight, statistics, dense, pruned = paired_layer()
    target = dense_target_weight(weight, statistics, damping=0.0)
    # argmin_W' ‖X_p W'ᵀ − X_d Wᵀ‖² (tokens as rows), by a direct least-squares solve.
    expected = torch.linalg.lstsq(pruned, dense @ weight.t()).solution.t()
    assert torch.allclose(target, expected, atol=1e-4)


def test_the_dense_target_objective_is_a_constant_plus_the_methods_own_objective_at_w_star():
    weight, statistics, dense, pruned = paired_layer(seed=1)
    target = dense_target_weight(weight, statistics, damping=0.0)
    generator = torch.Generator().manual_seed(2)
    gaps = []
    for _ in range(4):
        candidate = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        full = (dense @ weight.t() - pruned @ candidate.t()).square().sum()
        around_target = (pruned @ (target - candidate).t()).square().sum()
        gaps.append(float(full - around_target))
    assert max(gaps) - min(gaps) < 1e-6 * abs(gaps[0])


def test_the_engine_solves_the_last_linear_for_the_dense_models_outputs_in_closed_form():
    """With dense targets the model's last linear equals SparseGPT run on W* from the dense model's inputs to it
    and the pruned model's (which do not depend on that linear)."""
    dense = tiny_model("llama")
    pruned = copy.deepcopy(dense)
    ids = random_ids(8, 32)
    prune_model(pruned, ids, SparseGPTConfig(sparsity=0.5), FP32.model_copy(update={"targets": "dense"}))

    def down_proj_inputs(model):
        seen = []
        handle = model.model.layers[-1].mlp.down_proj.register_forward_pre_hook(
            lambda _module, inputs: seen.append(inputs[0]))
        with torch.no_grad():
            for batch in ids.split(4):
                model(input_ids=batch)
        handle.remove()
        return torch.cat(seen)

    statistics = PairedInputStatistics(dense.config.intermediate_size)
    for pruned_batch, dense_batch in zip(down_proj_inputs(pruned).split(4), down_proj_inputs(dense).split(4),
                                         strict=True):
        statistics.add_pair(pruned_batch, dense_batch)
    original = dense.model.layers[-1].mlp.down_proj.weight.detach()
    expected = sparsegpt_layer(dense_target_weight(original, statistics), statistics, SparseGPTConfig(sparsity=0.5))
    assert torch.allclose(pruned.model.layers[-1].mlp.down_proj.weight, expected.weight, atol=1e-5)
    assert not torch.allclose(expected.weight, sparsegpt_layer(original, statistics,
                                                              SparseGPTConfig(sparsity=0.5)).weight, atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dense_targets_bring_the_pruned_model_closer_to_the_dense_one(family):
    dense = tiny_model(family)
    ids, held_out = random_ids(16, 32), random_ids(8, 32, seed=7)
    with torch.no_grad():
        reference = dense(input_ids=held_out).logits
    errors = {}
    for targets in ("pruned", "dense"):
        model = copy.deepcopy(dense)
        prune_model(model, ids, SparseGPTConfig(sparsity=0.6), FP32.model_copy(update={"targets": targets}))
        with torch.no_grad():
            errors[targets] = float((model(input_ids=held_out).logits - reference).square().mean())
    assert errors["dense"] < 0.9 * errors["pruned"]



def test_where_both_models_see_the_same_inputs_the_target_is_the_weight_itself_despite_the_ridge():
    weight, _, dense, _ = paired_layer(seed=3)
    statistics = PairedInputStatistics(dense.shape[1])
    statistics.add_pair(dense.float().reshape(8, -1, dense.shape[1]), dense.float().reshape(8, -1, dense.shape[1]))
    assert torch.allclose(dense_target_weight(weight, statistics, damping=0.1), weight, atol=1e-6)
