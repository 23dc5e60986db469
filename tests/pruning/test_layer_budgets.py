"""Layer budgets: OWL and the depth ramp keep the model-wide sparsity exact, and give more to outlier-rich blocks."""

import math

import pytest
import torch
from pydantic import ValidationError
from tiny_models import random_ids, tiny_model

from pruning.blocks.budgets import (
    LayerBudget,
    block_sparsities,
    outlier_ratio,
    spread_sparsities,
    whole_weight_sparsities,
)
from pruning.config import EngineConfig, PruneJob
from pruning.engine import prune_model
from pruning.methods.wanda import WandaConfig
from pruning.models.architectures import adapter_for


def test_owl_spreads_within_lambda_keeps_the_mean_and_prunes_outlier_rich_blocks_least():
    ratios = [0.010, 0.030, 0.020, 0.005]
    sparsities = spread_sparsities(LayerBudget(owl_lambda=0.08), 0.6, ratios, 4)
    assert sum(sparsities) / 4 == pytest.approx(0.6)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    assert sorted(range(4), key=sparsities.__getitem__) == sorted(range(4), key=lambda index: -ratios[index])


def test_the_ramp_rises_linearly_with_depth_around_the_target():
    sparsities = spread_sparsities(LayerBudget(kind="ramp", ramp_delta=0.2), 0.5, None, 5)
    assert sparsities == pytest.approx([0.4, 0.45, 0.5, 0.55, 0.6])


def test_block_sparsities_are_whole_weights_per_row_and_sum_to_the_target_exactly():
    # SmolLM2's widths: 576 (q/k/v/o/gate/up) and 1536 (down), gcd 192; 30 blocks at 70%: 30·0.7·192 = 4032 steps.
    ratios = [0.01 * (index % 7) + 0.001 * index for index in range(30)]
    sparsities = block_sparsities(LayerBudget(), 0.7, ratios, 30, (576, 576, 576, 576, 576, 576, 1536))
    for width in (576, 1536):
        pruned = [math.floor(width * value) for value in sparsities]
        assert pruned == [round(width * value) for value in sparsities]  # floor(s·d_in) loses nothing
        assert sum(pruned) == round(30 * 0.7 * width)  # so the model-wide sparsity is exactly 0.7
    continuous = spread_sparsities(LayerBudget(), 0.7, ratios, 30)
    assert max(abs(a - b) for a, b in zip(sparsities, continuous, strict=True)) <= 1 / 192


def test_rounding_is_carried_from_block_to_block():
    # g·Σ s: 1.2, 2.4, 3.6, 4.8 round to 1, 2, 4, 5 quarters
    assert whole_weight_sparsities([0.3, 0.3, 0.3, 0.3], 4) == [0.25, 0.25, 0.5, 0.25]


def test_outlier_ratio_counts_scores_above_m_times_their_mean():
    weights = {"a": torch.ones(2, 4), "b": torch.ones(1, 4)}
    norms = {"a": torch.tensor([1.0, 1.0, 1.0, 100.0]), "b": torch.ones(4)}
    # 12 scores: 2 of 100 and 10 of 1, mean 17.5; with M = 5 only the two 100s are outliers.
    assert outlier_ratio(weights, norms, 5.0) == pytest.approx(2 / 12)


@pytest.mark.parametrize("budget", [LayerBudget(), LayerBudget(kind="ramp", ramp_delta=0.2)], ids=["owl", "ramp"])
def test_the_engine_prunes_each_block_to_its_budget_and_the_model_to_the_target(budget):
    model = tiny_model("llama")
    report = prune_model(model, random_ids(8, 32), WandaConfig(sparsity=0.6),
                         EngineConfig(forward_dtype="float32", batch_size=4, budget=budget))
    adapter = adapter_for(model)
    assert len(report.block_sparsity) == 2 and report.block_sparsity[0] != report.block_sparsity[1]
    removed = total = 0
    for block, target in zip(adapter.blocks(model), report.block_sparsity, strict=True):
        for name in adapter.linear_names:
            weight = adapter.read_weight(block.get_submodule(name))
            assert int((weight == 0).sum()) == round(target * weight.numel())  # whole weights per row
            removed, total = removed + int((weight == 0).sum()), total + weight.numel()
    widths = {adapter.read_weight(adapter.blocks(model)[0].get_submodule(name)).shape[1]
              for name in adapter.linear_names}
    steps = math.gcd(*widths) * 2  # 1/g per block, 2 blocks
    assert removed / total == pytest.approx(round(0.6 * steps) / steps, abs=1e-9)


@pytest.mark.parametrize(("method", "budget", "message"), [
    ({"method": "sparsegpt", "pattern": "2:4"}, {}, "engine.budget: layer budgets spread unstructured sparsity"),
    ({"method": "osscar", "sparsity": 0.5}, {}, "engine.budget: "),
    ({"method": "wanda", "sparsity": 0.05}, {"owl_lambda": 0.08}, "engine.budget: blocks would range over -0.03"),
    ({"method": "wanda", "sparsity": 0.5}, {"kind": "owl", "owl_lamda": 0.1}, "engine.budget.owl_lamda"),
])
def test_budgets_a_job_cannot_use_are_refused_naming_the_field(method, budget, message, tmp_path):
    with pytest.raises(ValidationError, match=message):
        PruneJob.model_validate({"method": method, "engine": {"budget": budget}, "output_dir": str(tmp_path / "o")})
