"""The engine on tiny random models of every supported family."""

import pytest
import torch
from tiny_models import FAMILY_CONFIGS, random_ids, tiny_model
from transformers import AutoModelForCausalLM

from pruning.blocks.calls import capture_block_inputs
from pruning.config import EngineConfig
from pruning.engine import prune_model
from pruning.methods.base import InputStatistics, reconstruction_error
from pruning.methods.wanda import WandaConfig
from pruning.models.architectures import SUPPORTED_MODEL_TYPES, adapter_for, adapter_for_model_type, head_layout

FAMILIES = sorted(FAMILY_CONFIGS)
FP32 = EngineConfig(forward_dtype="float32", batch_size=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_block_calls_replay_the_full_model_exactly(family):
    """Blocks called in isolation with the captured arguments reproduce the model's own hidden states."""
    model = tiny_model(family)
    ids = random_ids()
    adapter = adapter_for(model)
    hidden, calls = capture_block_inputs(model, adapter, ids, batch_size=4)
    reference: list[torch.Tensor] = []
    handles = [block.register_forward_pre_hook(lambda _module, inputs: reference.append(inputs[0].clone()))
               for block in adapter.blocks(model)]
    with torch.no_grad():
        model(input_ids=ids)
        for handle in handles:
            handle.remove()
        for index, block in enumerate(adapter.blocks(model)):
            replayed = torch.cat(list(hidden))
            assert torch.allclose(replayed, reference[index], atol=1e-5), f"block {index} input differs"
            hidden = [block(batch, *call.args, **call.kwargs) for batch, call in zip(hidden, calls[index], strict=True)]
            hidden = [output[0] if isinstance(output, tuple) else output for output in hidden]


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_prunes_every_block_linear_to_the_exact_row_sparsity(family, tmp_path):
    model = tiny_model(family)
    report = prune_model(model, random_ids(), WandaConfig(sparsity=0.5), FP32)
    adapter = adapter_for(model)
    assert len(report.layers) == len(adapter.linear_names) * len(adapter.blocks(model))
    for block in adapter.blocks(model):
        for name in adapter.linear_names:
            weight = adapter.read_weight(block.get_submodule(name))
            assert ((weight == 0).sum(dim=1) == weight.shape[1] // 2).all(), name
    assert float((model.get_output_embeddings().weight == 0).float().mean()) < 0.01
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_ids(2, 16)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-5)


def test_true_sequential_statistics_come_from_the_already_pruned_attention_inputs():
    """o_proj's error is measured on inputs produced by the pruned q/k/v, not the dense ones."""
    model = tiny_model("llama")
    block = model.model.layers[0]
    dense_o_proj = block.self_attn.o_proj.weight.detach().clone()
    ids = random_ids()
    report = prune_model(model, ids, WandaConfig(sparsity=0.5), FP32)
    captured = []
    handle = block.self_attn.o_proj.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    statistics = InputStatistics.from_inputs(torch.cat(captured))
    expected = reconstruction_error(dense_o_proj, block.self_attn.o_proj.weight.detach(), statistics)
    recorded = next(layer for layer in report.layers if layer.name == "model.layers.0.self_attn.o_proj")
    assert recorded.reconstruction_error == pytest.approx(expected, rel=1e-4)


def test_skip_layers_keeps_matching_linears_dense():
    model = tiny_model("llama")
    dense = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    options = EngineConfig(forward_dtype="float32", skip_layers=("model.layers.1.mlp.*",))
    report = prune_model(model, random_ids(), WandaConfig(sparsity=0.5), options)
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, dense)
    assert not any(layer.name.startswith("model.layers.1.mlp") for layer in report.layers)
    assert any(layer.name == "model.layers.1.self_attn.q_proj" for layer in report.layers)


def test_bfloat16_forward_keeps_fp32_master_weights_and_exact_sparsity():
    model = tiny_model("llama")
    prune_model(model, random_ids(), WandaConfig(pattern="2:4"),
                EngineConfig(forward_dtype="bfloat16"))
    weight = model.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.float32
    assert ((weight != 0).reshape(weight.shape[0], -1, 4).sum(dim=2) == 2).all()


def test_unknown_architecture_error_lists_the_supported_ones():
    with pytest.raises(ValueError) as raised:
        adapter_for_model_type("bloom")
    assert "bloom" in str(raised.value)
    for model_type in SUPPORTED_MODEL_TYPES:
        assert model_type in str(raised.value)


def test_head_layout_reads_grouped_query_attention():
    layout = head_layout(FAMILY_CONFIGS["llama"])
    assert (layout.num_attention_heads, layout.num_key_value_heads, layout.head_dim) == (4, 2, 16)
    assert head_layout(FAMILY_CONFIGS["gpt2"]).num_key_value_heads == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_reusing_finished_submodule_outputs_gives_bit_identical_weights(family, monkeypatch):
    import pruning.blocks.pruner as pruner_module
    from pruning.engine import PruneEngine
    from pruning.methods.sparsegpt import SparseGPTConfig
    from pruning.models.access import InMemoryModel

    reused_children = []

    def reusing(block, recorded, consume=False):
        reused_children.extend(recorded)
        return original(block, recorded, consume)

    original = pruner_module.reusing
    monkeypatch.setattr(pruner_module, "reusing", reusing)
    results = []
    for reuse in (True, False):
        model = tiny_model(family)
        with PruneEngine(InMemoryModel(model), SparseGPTConfig(sparsity=0.5), FP32, inputs=random_ids()) as engine:
            engine.pruner.reuse_outputs = reuse
            engine.run()
        results.append(model.state_dict())
        if reuse and family != "mamba":  # a Mamba block is one child (its mixer): nothing finishes early
            assert reused_children, "no sub-module output was reused"
    assert all(results[1][name].equal(tensor) for name, tensor in results[0].items())


def test_finished_children_precede_every_linear_still_to_solve():
    from pruning.blocks.finished_submodules import finished_children

    adapter = adapter_for_model_type("llama")
    assert finished_children(adapter, ["self_attn.o_proj", "mlp.down_proj"]) == []
    assert finished_children(adapter, ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]) == ["self_attn"]
    assert finished_children(adapter, []) == ["self_attn", "mlp"]
    assert finished_children(adapter_for_model_type("opt"), ["fc1", "fc2"]) == ["self_attn"]
