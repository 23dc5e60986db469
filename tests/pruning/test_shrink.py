"""Structured pruning end to end on tiny models: zeroed and physically sliced models agree, and the sliced
model loads with plain `from_pretrained`."""

import pytest
import torch
from tiny_models import random_ids, tiny_model
from transformers import AutoModelForCausalLM

from pruning.config import EngineConfig
from pruning.engine import prune_model
from pruning.methods.osscar import OSSCARConfig
from pruning.methods.structured_wanda import StructuredWandaConfig
from pruning.models.architectures import adapter_for, head_layout
from pruning.models.shrink import shrink_record

FP32 = EngineConfig(forward_dtype="float32")


@pytest.mark.parametrize("family, budget", [
    ("llama", {"sparsity": 0.5, "attention_groups": 1}),
    ("qwen3", {"sparsity": 0.25, "attention_groups": 1}),
    ("phi3", {"sparsity": 0.5}),
    ("opt", {"sparsity": 0.5}),
    ("gpt2", {"sparsity": 0.25}),
])
def test_sliced_model_equals_the_zeroed_model_and_reloads_smaller(family, budget, tmp_path):
    model = tiny_model(family)
    dense_parameters = sum(parameter.numel() for parameter in model.parameters())
    layout = head_layout(model.config)
    adapter = adapter_for(model)
    mlp = next(unit for unit in adapter.structured_units if unit.kind == "mlp")
    neurons = adapter.read_weight(adapter.blocks(model)[0].get_submodule(mlp.target)).shape[1]
    report = prune_model(model, random_ids(), OSSCARConfig(**budget, update_iter=8), FP32)
    solved = {layer.name.removeprefix(f"{adapter.blocks_path}.").split(".", 1)[1] for layer in report.layers}
    targets = {unit.target for unit in adapter.structured_units
               if unit.kind == "mlp" or budget.get("attention_groups")}
    assert solved == targets
    ids = random_ids(2, 16)
    with torch.no_grad():
        zeroed = model(input_ids=ids).logits
    record = shrink_record(model)
    assert record["parameters_after"] < record["parameters_before"] == dense_parameters
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, zeroed, atol=1e-5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert sum(parameter.numel() for parameter in reloaded.parameters()) == record["parameters_after"]
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, zeroed, atol=1e-5)
    if budget.get("attention_groups"):
        assert reloaded.config.num_key_value_heads == layout.num_key_value_heads - 1
        assert reloaded.config.num_attention_heads == layout.num_attention_heads - layout.queries_per_group
    assert record["removed_groups_per_block"]["mlp"] == neurons - round(neurons * (1 - budget["sparsity"]))


def test_structured_baseline_runs_through_the_same_engine_path():
    model = tiny_model("llama")
    report = prune_model(model, random_ids(), StructuredWandaConfig(sparsity=0.5), FP32)
    assert all(layer.name.endswith("mlp.down_proj") for layer in report.layers)
    for block in adapter_for(model).blocks(model):
        dead = (block.mlp.down_proj.weight == 0).all(dim=0)
        assert int(dead.sum()) == 64
        assert (block.mlp.gate_proj.weight[dead] == 0).all() and (block.mlp.up_proj.weight[dead] == 0).all()


@pytest.mark.parametrize("family, budget, message", [
    ("opt", {"attention_groups": 1}, "method.attention_groups: removing attention heads needs"),
    ("llama", {"attention_groups": 2}, "would remove every one of the 2 KV groups"),
    ("mamba", {"sparsity": 0.5}, "structured pruning is not available for mamba"),
])
def test_budgets_a_model_cannot_take_fail_before_any_work(family, budget, message):
    with pytest.raises(ValueError, match=message):
        prune_model(tiny_model(family), random_ids(), OSSCARConfig(**budget), FP32)
