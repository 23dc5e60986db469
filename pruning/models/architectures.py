"""Architecture adapters: for each model family, where the blocks are and which linears they hold.

Decoder language models take token ids; vision transformers (ViT, DeiT, DINOv2) take `pixel_values` and their
encoder blocks see (H / patch)·(W / patch) patch tokens plus the class token (and DeiT's distillation token).
An adapter is data, not a subclass. `linear_groups` lists a block's linears in the order they are
computed (attention inputs -> attention output -> MLP inputs -> MLP output); the linears of one
group read the same input tensor, so they share one input statistic. GPT-2's `Conv1D` stores its
weight as (d_in, d_out); `transposed_weights` says so and the engine flips it to (d_out, d_in).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import torch
from torch import nn

from pruning.errors import ConfigError

_LLAMA_STYLE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


@dataclass(frozen=True)
class StructuredUnit:
    """A sub-block for structured pruning: its second linear (`target`), whose input column groups are
    removed, and the linears that produce those columns, each a sequence of row segments:
    "q" (num_heads·head_dim rows, a KV group owns queries_per_group·head_dim), "kv" (num_kv_heads·head_dim
    rows, a KV group owns head_dim), "neuron" (one row per MLP neuron). Fused producers list several."""

    kind: str
    target: str
    producers: tuple[tuple[str, tuple[str, ...]], ...]


_LLAMA_STYLE_UNITS = (
    StructuredUnit("attention", "self_attn.o_proj", (("self_attn.q_proj", ("q",)), ("self_attn.k_proj", ("kv",)),
                                                      ("self_attn.v_proj", ("kv",)))),
    StructuredUnit("mlp", "mlp.down_proj", (("mlp.gate_proj", ("neuron",)), ("mlp.up_proj", ("neuron",)))),
)

# transformers 5's vision encoders (ViT, DeiT, DINOv2) name their block linears as Llama does; attention is
# multi-head, so a "KV group" is one head.
_VISION_GROUPS: tuple[tuple[str, ...], ...] = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ("attention.o_proj",),
    ("mlp.fc1",),
    ("mlp.fc2",),
)
_VISION_UNITS = (
    StructuredUnit("attention", "attention.o_proj", (("attention.q_proj", ("q",)), ("attention.k_proj", ("kv",)),
                                                     ("attention.v_proj", ("kv",)))),
    StructuredUnit("mlp", "mlp.fc2", (("mlp.fc1", ("neuron",)),)),
)


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where a family keeps its blocks and how each block's linears are ordered and grouped."""

    family: str
    model_types: tuple[str, ...]
    blocks_path: str
    linear_groups: tuple[tuple[str, ...], ...]
    # What the model takes: "text" (input_ids) or "image" (pixel_values, one class token per image plus
    # `extra_tokens` more), and where else its blocks may sit (a backbone without a task head, e.g. Dinov2Model).
    modality: Literal["text", "image"] = "text"
    extra_tokens: int = 0
    fixed_image_size: bool = False  # takes config.image_size only (ViT, DeiT); DINOv2 interpolates its positions
    other_blocks_paths: tuple[str, ...] = ()
    transposed_weights: bool = False
    # (linear, producer): the model multiplies by this linear's weight directly, never calling the module, and
    # its input is the first d_in columns of the producer module's output (Mamba's dt_proj after x_proj).
    input_producers: tuple[tuple[str, str], ...] = ()
    structured_units: tuple[StructuredUnit, ...] = ()
    # The config keys that a physically smaller model changes; attention removal needs an explicit head_dim.
    intermediate_size_key: str = "intermediate_size"
    explicit_head_dim: bool = False

    @property
    def input_name(self) -> str:
        """The model's keyword for its calibration inputs."""
        return "pixel_values" if self.modality == "image" else "input_ids"

    def sequence_shape(self, config: Any, inputs: torch.Tensor) -> tuple[int, int]:
        """(samples, tokens per sample) that the blocks see for `inputs`: token windows (N, L), or images
        (N, C, H, W) cut into patches of config.patch_size plus the class token(s)."""
        if self.modality == "text":
            return int(inputs.shape[0]), int(inputs.shape[1])
        patch = int(config.patch_size)
        patches = (int(inputs.shape[-2]) // patch) * (int(inputs.shape[-1]) // patch)
        return int(inputs.shape[0]), patches + 1 + self.extra_tokens

    def bound_to(self, model: nn.Module) -> ArchitectureAdapter:
        """This adapter with `blocks_path` where this model keeps its blocks (a backbone or a task model)."""
        for path in (self.blocks_path, *self.other_blocks_paths):
            try:
                module: Any = model
                for attribute in path.split("."):
                    module = getattr(module, attribute)
            except AttributeError:
                continue
            return self if path == self.blocks_path else replace(self, blocks_path=path)
        return self

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The model's list of decoder blocks."""
        module: nn.Module = model
        for attribute in self.blocks_path.split("."):
            module = getattr(module, attribute)
        if not isinstance(module, nn.ModuleList):
            raise TypeError(f"{self.family}: '{self.blocks_path}' is a {type(module).__name__}, expected a ModuleList")
        return module

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for group in self.linear_groups for name in group)

    def read_weight(self, linear: nn.Module) -> torch.Tensor:
        """The weight as a (d_out, d_in) fp32 copy."""
        weight = cast(torch.Tensor, linear.weight).detach()
        return (weight.t() if self.transposed_weights else weight).to(torch.float32).clone()

    def write_weight(self, linear: nn.Module, weight: torch.Tensor) -> None:
        """Store a (d_out, d_in) weight back in the module's own layout, dtype and device."""
        stored = weight.t() if self.transposed_weights else weight
        parameter = cast(torch.Tensor, linear.weight)
        parameter.data.copy_(stored.to(parameter.dtype))


ADAPTERS: tuple[ArchitectureAdapter, ...] = (
    ArchitectureAdapter("llama", ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma"),
                        "model.layers", _LLAMA_STYLE_GROUPS, structured_units=_LLAMA_STYLE_UNITS,
                        explicit_head_dim=True),
    ArchitectureAdapter("phi3", ("phi3",), "model.layers",
                        (("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
                        structured_units=(
                            StructuredUnit("attention", "self_attn.o_proj",
                                           (("self_attn.qkv_proj", ("q", "kv", "kv")),)),
                            StructuredUnit("mlp", "mlp.down_proj", (("mlp.gate_up_proj", ("neuron", "neuron")),)))),
    ArchitectureAdapter("opt", ("opt",), "model.decoder.layers",
                        (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.out_proj",),
                         ("fc1",), ("fc2",)),
                        structured_units=(
                            StructuredUnit("attention", "self_attn.out_proj", (
                                ("self_attn.q_proj", ("q",)), ("self_attn.k_proj", ("kv",)),
                                ("self_attn.v_proj", ("kv",)))),
                            StructuredUnit("mlp", "fc2", (("fc1", ("neuron",)),))),
                        intermediate_size_key="ffn_dim"),
    ArchitectureAdapter("gpt2", ("gpt2",), "transformer.h",
                        (("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)),
                        transposed_weights=True,
                        structured_units=(
                            StructuredUnit("attention", "attn.c_proj", (("attn.c_attn", ("q", "kv", "kv")),)),
                            StructuredUnit("mlp", "mlp.c_proj", (("mlp.c_fc", ("neuron",)),))),
                        intermediate_size_key="n_inner"),
    # Mamba: in_proj -> (causal conv, selective scan inputs) x_proj -> dt_proj -> (scan) out_proj.
    ArchitectureAdapter("mamba", ("mamba",), "backbone.layers",
                        (("mixer.in_proj",), ("mixer.x_proj",), ("mixer.dt_proj",), ("mixer.out_proj",)),
                        input_producers=(("mixer.dt_proj", "mixer.x_proj"),)),
    # Vision encoders: ViTForImageClassification / ViTModel, DeiT (with or without its distillation token's
    # teacher head), Dinov2ForImageClassification / Dinov2Model.
    ArchitectureAdapter("vit", ("vit",), "vit.layers", _VISION_GROUPS, modality="image", fixed_image_size=True,
                        other_blocks_paths=("layers",), structured_units=_VISION_UNITS, explicit_head_dim=True),
    ArchitectureAdapter("deit", ("deit",), "deit.layers", _VISION_GROUPS, modality="image", extra_tokens=1,
                        fixed_image_size=True, other_blocks_paths=("layers",), structured_units=_VISION_UNITS,
                        explicit_head_dim=True),
    # DINOv2's config gives its MLP width as hidden_size x an integer mlp_ratio: only attention heads can go.
    ArchitectureAdapter("dinov2", ("dinov2",), "dinov2.encoder.layer", _VISION_GROUPS, modality="image",
                        other_blocks_paths=("encoder.layer",), structured_units=_VISION_UNITS[:1],
                        explicit_head_dim=True),
)

# DINOv2 with the SwiGLU MLP (use_swiglu_ffn, the giant model): gate_proj and up_proj read the same input.
DINOV2_SWIGLU = ArchitectureAdapter(
    "dinov2-swiglu", ("dinov2",), "dinov2.encoder.layer",
    (_VISION_GROUPS[0], _VISION_GROUPS[1], ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)), modality="image",
    other_blocks_paths=("encoder.layer",), structured_units=_VISION_UNITS[:1], explicit_head_dim=True)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(t for adapter in ADAPTERS for t in adapter.model_types))


def adapter_for_model_type(model_type: str) -> ArchitectureAdapter:
    """The adapter for a config's `model_type`, or an error that lists what is supported."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise ConfigError(f"model: architecture '{model_type}' is not supported; supported model types: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    config = cast(Any, model).config
    adapter = DINOV2_SWIGLU if getattr(config, "use_swiglu_ffn", False) else adapter_for_model_type(
        str(config.model_type))
    return adapter.bound_to(model)


@dataclass(frozen=True)
class HeadLayout:
    """How attention heads are grouped: `num_key_value_heads` KV groups of query heads."""

    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    @property
    def queries_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


def head_layout(config: Any) -> HeadLayout:
    """Read the head/KV-group layout from any supported config (attribute maps cover GPT-2's `n_head`)."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return HeadLayout(heads, kv_heads, head_dim)
