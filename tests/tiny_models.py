"""Tiny random models of every supported family, and a tiny byte-level BPE tokenizer trained offline."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MambaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from pruning.methods.base import InputStatistics

VOCAB = 320
SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes weights from a trained network. "
    "A layer-wise solver sees one block at a time, with calibration inputs, and keeps what matters. "
) * 20

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

FAMILY_CONFIGS: dict[str, PretrainedConfig] = {
    "llama": LlamaConfig(**_COMMON),
    "mistral": MistralConfig(**_COMMON, sliding_window=None),
    "qwen2": Qwen2Config(**_COMMON),
    "qwen3": Qwen3Config(**_COMMON, head_dim=16),
    "gemma2": Gemma2Config(**_COMMON, head_dim=16, sliding_window=8),
    "gemma3_text": Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=8,
                                    layer_types=["sliding_attention", "full_attention"]),
    "phi3": Phi3Config(**_COMMON, pad_token_id=0),
    "opt": OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=256, word_embed_proj_dim=64),
    "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256),
    "mamba": MambaConfig(vocab_size=VOCAB, hidden_size=64, state_size=8, num_hidden_layers=2, expand=2,
                         time_step_rank=8),
}


_VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8, num_labels=10)
# Each vision class pruneflow supports, as a tiny random model of 2 blocks of 4 heads over 4 x 4 patches of 8 pixels.
VISION_MODELS: dict[str, tuple[type, PretrainedConfig]] = {
    "vit": (ViTForImageClassification, ViTConfig(**_VISION, intermediate_size=128)),
    "vit-backbone": (ViTModel, ViTConfig(**_VISION, intermediate_size=128)),
    "deit": (DeiTForImageClassification, DeiTConfig(**_VISION, intermediate_size=128)),
    "deit-distilled": (DeiTForImageClassificationWithTeacher, DeiTConfig(**_VISION, intermediate_size=128)),
    "dinov2": (Dinov2ForImageClassification, Dinov2Config(**_VISION, mlp_ratio=2)),
    "dinov2-backbone": (Dinov2Model, Dinov2Config(**_VISION, mlp_ratio=2)),
    "dinov2-swiglu": (Dinov2Model, Dinov2Config(**_VISION, mlp_ratio=2, use_swiglu_ffn=True)),
}


def tiny_vision_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model_class, config = VISION_MODELS[kind]
    return model_class(copy.deepcopy(config)).eval()


def random_pixels(images: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Normalized RGB images (N, 3, size, size) as an image processor gives them."""
    return torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # A copy: structured pruning rewrites the model's config in place.
    model = AutoModelForCausalLM.from_config(copy.deepcopy(FAMILY_CONFIGS[family]), dtype=torch.float32)
    return model.eval()


def correlated_layer(rows: int = 48, columns: int = 64, tokens: int = 2048, seed: int = 0):
    """One linear layer: a weight, and inputs with correlated features of unequal scale (like activations)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    scales = torch.logspace(-1, 1, columns)
    inputs = (torch.randn(tokens, columns, generator=generator) @ mixing + 0.3) * scales
    weight = torch.randn(rows, columns, generator=generator)
    return weight, InputStatistics.from_inputs(inputs.reshape(16, tokens // 16, columns)), inputs


def random_ids(batch: int = 6, length: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def save_tiny_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([SAMPLE_TEXT], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_checkpoint(directory: Path, tokenizer_dir: Path, family: str = "llama") -> Path:
    """A complete local HF directory (safetensors + tokenizer) of a tiny random model."""
    from transformers import AutoTokenizer

    tiny_model(family).save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return directory


DEEP_LLAMA = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def save_deep_checkpoint(directory: Path, tokenizer_dir: Path) -> Path:
    """An 8-block Llama: long enough to stop or kill a run between its blocks."""
    FAMILY_CONFIGS.setdefault("llama-deep", DEEP_LLAMA)
    return save_tiny_checkpoint(directory, tokenizer_dir, family="llama-deep")
