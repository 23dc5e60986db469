"""The factored (sparse + low-rank) form: the module, the bitmask format, and the checkpoint round trip."""

import pytest
import torch
from tiny_models import random_ids, tiny_model
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig

from pruning import load_compressed
from pruning.config import EngineConfig
from pruning.engine import PruneEngine
from pruning.methods.oats import OATSConfig
from pruning.models.access import InMemoryModel
from pruning.models.architectures import adapter_for
from pruning.models.factored import FACTORED_DIRECTORY, SparseLowRankLinear, pack_mask, save_factored, unpack_mask

FP32 = EngineConfig(forward_dtype="float32")


@pytest.mark.parametrize("shape", [(3, 5), (8, 8), (17, 31)])
def test_mask_bits_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(shape[0])) < 0.4
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_mask(packed, shape), mask)


@pytest.mark.parametrize("sparse_format", ["csr", "dense"])
def test_module_computes_x_st_plus_low_rank_plus_bias(sparse_format):
    generator = torch.Generator().manual_seed(0)
    sparse = torch.randn(24, 40, generator=generator) * (torch.rand(24, 40, generator=generator) < 0.3)
    up, down, bias = (torch.randn(24, 3, generator=generator), torch.randn(3, 40, generator=generator),
                      torch.randn(24, generator=generator))
    module = SparseLowRankLinear(sparse, up, down, bias, sparse_format)
    inputs = torch.randn(2, 7, 40, generator=generator)
    expected = torch.nn.functional.linear(inputs, sparse + up @ down, bias)
    assert torch.allclose(module(inputs), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["llama-tied", "gpt2", "phi3"])
def test_factored_checkpoint_reloads_to_the_merged_model_and_is_smaller(family, tmp_path):
    if family == "llama-tied":
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=256,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             num_key_value_heads=2, tie_word_embeddings=True)).eval()
    else:
        model = tiny_model(family)
    with PruneEngine(InMemoryModel(model), OATSConfig(sparsity=0.5, iterations=10), FP32,
                     inputs=random_ids()) as engine:
        report = engine.run()
    factors = engine.factors
    adapter = adapter_for(model)
    assert set(factors) == {f"{adapter.blocks_path}.{index}.{name}" for index in range(2)
                                   for name in adapter.linear_names}
    assert report.decoder_linear_sparsity == pytest.approx(0.5, abs=0.01)
    model.save_pretrained(tmp_path / "pruned")
    save_factored(model, factors, tmp_path / "pruned" / FACTORED_DIRECTORY)

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    for sparse_format in ("csr", "dense"):
        factored = load_compressed(tmp_path / "pruned", sparse_format)
        replaced = [module for module in factored.modules() if isinstance(module, SparseLowRankLinear)]
        assert len(replaced) == len(factors)
        ids = random_ids(2, 16)
        with torch.no_grad():
            assert torch.allclose(factored(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)
    linear_bytes = sum(4 * term.sparse.numel() for term in factors.values())
    dense_size = (tmp_path / "pruned" / "model.safetensors").stat().st_size
    factored_dir = tmp_path / "pruned" / FACTORED_DIRECTORY
    factored_size = sum(path.stat().st_size for path in factored_dir.glob("*.safetensors"))
    # 50% compression in fp32: S as 1 bit + nonzero values, plus the factors, save about half the linears' bytes.
    assert dense_size - factored_size > 0.3 * linear_bytes
    # No Auto class may take the factored folder for a full model (it would initialise the factored linears).
    for auto in (AutoModelForCausalLM, AutoModel, AutoConfig):
        with pytest.raises(ValueError, match="model type `pruneflow-sparse-low-rank`"):
            auto.from_pretrained(factored_dir)
    assert "load_compressed" in (factored_dir / "README.md").read_text()


def test_loading_a_directory_without_factors_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="factored"):
        load_compressed(tmp_path)
