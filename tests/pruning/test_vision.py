"""Vision transformers (ViT, DeiT, DINOv2) through the same engine as the language models: every method prunes the
encoder blocks' linears to the asked sparsity, the patch embedding and the classifier stay dense, and a structured
result is sliced into a smaller model that plain `from_pretrained` loads and that computes the same outputs."""

import pytest
import torch
from tiny_models import VISION_MODELS, random_pixels, tiny_vision_model

from pruning.config import EngineConfig
from pruning.engine import prune_model
from pruning.errors import ConfigError
from pruning.methods.masks import satisfies_nm
from pruning.methods.registry import method_config
from pruning.models.architectures import adapter_for
from pruning.models.shrink import shrink_record

FP32 = EngineConfig(forward_dtype="float32")
UNSTRUCTURED = ["magnitude", "wanda", "sparsegpt", "admm", "apt", "oats"]
STRUCTURED = ["osscar", "structured-wanda", "structured-magnitude"]


def outputs(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What the model gives a user: class logits, or a backbone's pooled features."""
    with torch.no_grad():
        result = model(pixel_values=pixels)
    return result.logits if hasattr(result, "logits") else result.pooler_output


def linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    adapter = adapter_for(model)
    return {f"{index}.{name}": adapter.read_weight(block.get_submodule(name))
            for index, block in enumerate(adapter.blocks(model)) for name in adapter.linear_names}


def outside_blocks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    blocks = f"{adapter_for(model).blocks_path}."
    return {name: tensor.clone() for name, tensor in model.state_dict().items() if not name.startswith(blocks)}


@pytest.mark.parametrize("kind", sorted(VISION_MODELS))
@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_every_method_prunes_each_encoder_linear_to_exactly_half(kind, method):
    model = tiny_vision_model(kind)
    dense_outside = outside_blocks(model)
    report = prune_model(model, random_pixels(), method_config({"method": method, "sparsity": 0.5}), FP32)
    adapter = adapter_for(model)
    assert len(report.layers) == len(adapter.blocks(model)) * len(adapter.linear_names)
    if method == "oats":  # the weight is the merged S + UV: half the parameters are gone from S and the factors
        assert all(abs(layer.sparsity - 0.5) < 0.02 for layer in report.layers)
    else:
        for name, weight in linear_weights(model).items():
            assert int((weight == 0).sum()) == weight.numel() // 2, name
    after = outside_blocks(model)  # patch embedding, position embeddings, norms and classifier untouched
    assert all(torch.equal(tensor, after[name]) for name, tensor in dense_outside.items())
    assert torch.isfinite(outputs(model, random_pixels(4, seed=1))).all()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "apt"])
def test_two_of_four_holds_in_every_group_of_a_vit(method):
    model = tiny_vision_model("vit")
    config = method_config({"method": method, "pattern": "2:4"})
    prune_model(model, random_pixels(), config, FP32)
    assert all(satisfies_nm(weight, config.nm) for weight in linear_weights(model).values())


def test_calibrated_methods_fit_the_inputs_better_than_magnitude():
    """SparseGPT and ADMM solve for the calibration images: their features stay closer to the dense model's."""
    pixels, held_out = random_pixels(32), random_pixels(8, seed=1)
    dense = outputs(tiny_vision_model("vit-backbone"), held_out)
    distance = {}
    for method in ("magnitude", "sparsegpt", "admm"):
        model = tiny_vision_model("vit-backbone")
        prune_model(model, pixels, method_config({"method": method, "sparsity": 0.5}), FP32)
        distance[method] = float((outputs(model, held_out) - dense).norm())
    assert distance["sparsegpt"] < distance["magnitude"] and distance["admm"] < distance["magnitude"]


@pytest.mark.parametrize("kind", sorted(VISION_MODELS))
@pytest.mark.parametrize("method", STRUCTURED)
def test_structured_result_is_smaller_loads_with_from_pretrained_and_computes_the_same(kind, method, tmp_path):
    model_class = VISION_MODELS[kind][0]
    model = tiny_vision_model(kind)
    neurons = 0 if kind.startswith("dinov2") else 0.5  # DINOv2's config cannot describe a narrower MLP
    budget = {"method": method, "sparsity": neurons, "attention_groups": 1}
    prune_model(model, random_pixels(), method_config(budget), FP32)
    pixels = random_pixels(4, seed=1)
    zeroed = outputs(model, pixels)
    record = shrink_record(model)
    assert record["removed_groups_per_block"] == ({"attention": 1} if neurons == 0 else {"attention": 1, "mlp": 64})
    model.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert sum(parameter.numel() for parameter in reloaded.parameters()) == record["parameters_after"] \
        < record["parameters_before"]
    assert reloaded.config.num_attention_heads == 3
    block = adapter_for(reloaded).blocks(reloaded)[0]
    mlp_input = "mlp.up_proj" if kind == "dinov2-swiglu" else "mlp.fc1"
    dense = tiny_vision_model(kind)
    width = adapter_for(dense).blocks(dense)[0].get_submodule(mlp_input).out_features
    assert block.get_submodule(mlp_input).out_features == (width if neurons == 0 else width // 2)
    assert block.attention.q_proj.out_features == 48
    assert torch.allclose(outputs(reloaded, pixels), zeroed, atol=1e-5)


def test_blocks_are_found_in_a_task_model_and_in_a_backbone():
    assert adapter_for(tiny_vision_model("dinov2")).blocks_path == "dinov2.encoder.layer"
    assert adapter_for(tiny_vision_model("dinov2-backbone")).blocks_path == "encoder.layer"
    assert adapter_for(tiny_vision_model("vit-backbone")).blocks_path == "layers"


def test_the_blocks_see_patches_plus_class_and_distillation_tokens():
    pixels = random_pixels(3)
    assert adapter_for(tiny_vision_model("vit")).sequence_shape(VISION_MODELS["vit"][1], pixels) == (3, 17)
    assert adapter_for(tiny_vision_model("deit")).sequence_shape(VISION_MODELS["deit"][1], pixels) == (3, 18)


def test_removing_dinov2_mlp_neurons_is_refused_before_any_work():
    model = tiny_vision_model("dinov2")
    with pytest.raises(ConfigError, match="^method.sparsity: .*attention_groups"):
        prune_model(model, random_pixels(), method_config({"method": "osscar", "sparsity": 0.25}), FP32)


def test_a_swiglu_dinov2_prunes_its_gate_up_and_down_projections():
    model = tiny_vision_model("dinov2-swiglu")
    names = adapter_for(model).linear_names
    assert names[-3:] == ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
