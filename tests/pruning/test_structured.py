"""Structured pruning on single layers: OSSCAR against the structured baselines, the exact refit, budgets."""

import pytest
import torch
from pydantic import ValidationError
from tiny_models import correlated_layer

from pruning.methods import osscar, structured_magnitude, structured_wanda
from pruning.methods.structured import ColumnGroups

MLP = ColumnGroups("mlp", 1, 64)
ATTENTION = ColumnGroups("attention", 16, 4)


def baselines(fields):
    return [(module, config_class(**fields, refit=refit))
            for module, config_class in ((structured_magnitude, structured_magnitude.StructuredMagnitudeConfig),
                                         (structured_wanda, structured_wanda.StructuredWandaConfig))
            for refit in (False, True)]


@pytest.mark.parametrize("seed", [0, 1, 2, 7, 11])
@pytest.mark.parametrize("groups, fields", [(MLP, {"sparsity": 0.5}), (MLP, {"sparsity": 0.25}),
                                            (ATTENTION, {"attention_groups": 1}), (ATTENTION, {"attention_groups": 2})])
def test_osscar_objective_is_at_most_every_baselines_at_the_same_budget(seed, groups, fields):
    weight, statistics, _ = correlated_layer(48, 64, seed=seed)
    config = osscar.OSSCARConfig(**fields, update_iter=4, local_search=True, swap_size=4)
    result = osscar.prune_layer(weight, statistics, config, groups)
    zero_columns = int((result.weight == 0).all(dim=0).sum())
    assert zero_columns == 64 - result.details["kept_groups"] * groups.size
    for module, config in baselines(fields):
        baseline = module.prune_layer(weight, statistics, config, groups)
        assert baseline.details["kept_groups"] == result.details["kept_groups"]
        assert result.details["objective"] <= baseline.details["objective"] + 1e-9 * abs(baseline.details["objective"])


def test_the_refit_is_least_squares_on_the_kept_columns():
    weight, statistics, inputs = correlated_layer(48, 64, seed=4)
    config = osscar.OSSCARConfig(sparsity=0.5, ridge=0.0)
    result = osscar.prune_layer(weight, statistics, config, MLP)
    kept = (result.weight != 0).any(dim=0)
    solution = torch.linalg.lstsq(inputs.double()[:, kept], inputs.double() @ weight.double().t()).solution
    difference = torch.linalg.norm(result.weight.double()[:, kept].t() - solution) / torch.linalg.norm(solution)
    assert float(difference) < 1e-5  # the gram is accumulated in fp32


def test_local_search_only_accepts_swaps_that_lower_the_objective():
    weight, statistics, _ = correlated_layer(48, 64, seed=5)
    fields = {"sparsity": 0.6, "update_iter": 16}
    greedy = osscar.prune_layer(weight, statistics, osscar.OSSCARConfig(**fields), MLP)
    searched = osscar.prune_layer(weight, statistics, osscar.OSSCARConfig(**fields, local_search=True, swap_size=4),
                                  MLP)
    assert searched.details["objective"] <= greedy.details["objective"]
    assert (searched.details["swaps"] > 0) == (searched.details["objective"] < greedy.details["objective"])


def test_kept_counts_round_down_to_a_multiple_and_bad_budgets_name_the_field():
    config = osscar.OSSCARConfig(sparsity=0.3, round_to=8)
    assert config.kept(ColumnGroups("mlp", 1, 100)) == 64  # ceil(70) rounded down to a multiple of 8
    with pytest.raises(ValidationError, match="nothing to remove"):
        osscar.OSSCARConfig()
    with pytest.raises(ValueError, match="attention_groups 4 would remove all 4"):
        osscar.OSSCARConfig(attention_groups=4).kept(ATTENTION)
