"""Vision checkpoints (ViT, DeiT, DINOv2): the model class a config names, and the checkpoint under the module
names that the engine streams.

transformers 5 builds these models with Llama-style module names (`vit.layers.0.attention.q_proj`) but reads and
writes the hub's older tensor names (`vit.encoder.layer.0.attention.attention.query`), converting on load. The
engine reads a checkpoint tensor by tensor under the module's own names, so a vision checkpoint is loaded once and
kept under those names in the cache (`models/vision-<digest>`); transformers 5 loads that folder as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pruning.errors import ConfigError
from pruning.io import atomic_directory

# The classes pruneflow prunes, by config.json's `architectures` (task models and backbones).
VISION_CLASSES = ("ViTForImageClassification", "ViTModel", "DeiTForImageClassification",
                  "DeiTForImageClassificationWithTeacher", "DeiTModel", "Dinov2ForImageClassification", "Dinov2Model")
PROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILE = "model.safetensors"


def vision_class(config: Any) -> type[nn.Module]:
    """The transformers class named by the config's `architectures` (one of `VISION_CLASSES`)."""
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    if not names or names[0] not in VISION_CLASSES:
        raise ConfigError(f"model: config.json names the architecture {names[0] if names else 'none'}; pruneflow "
                          f"prunes vision models of the classes {', '.join(VISION_CLASSES)}: set `architectures` to "
                          "the one the weights belong to")
    model_class: type[nn.Module] = getattr(transformers, names[0])
    return model_class


def load_vision_model(model_dir: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The whole vision model on the CPU, in eval mode (vision models are small beside the language models)."""
    from transformers import AutoConfig

    model_class: Any = vision_class(AutoConfig.from_pretrained(model_dir))
    model: nn.Module = model_class.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
    return model.eval()


def module_named_checkpoint(directory: Path, digest: str, cache_dir: Path) -> Path:
    """`directory` itself when its tensors carry the module names, else a copy that does (made once)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    with init_empty_weights():
        expected = set(vision_class(config)(config).state_dict())
    stored: set[str] = set()
    for weights in sorted(directory.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as handle:
            stored.update(handle.keys())
    if stored == expected:
        return directory
    target = cache_dir / "models" / f"vision-{digest.split(':')[-1][:32]}"
    if (target / WEIGHTS_FILE).is_file():
        return target
    model = load_vision_model(directory)
    with atomic_directory(target) as staging:
        save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()},
                  str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        cast(Any, model).config.save_pretrained(staging)
        if (directory / PROCESSOR_FILE).is_file():
            shutil.copyfile(directory / PROCESSOR_FILE, staging / PROCESSOR_FILE)
    return target


def image_processor(model_dir: Path) -> Any:
    """The model's own image processor (preprocessor_config.json); a folder without one is refused."""
    from transformers import AutoImageProcessor

    if not (model_dir / PROCESSOR_FILE).is_file():
        raise ConfigError(f"model: '{model_dir}' has no {PROCESSOR_FILE}, so its images cannot be prepared as it was "
                          "trained; save the model's image processor there (processor.save_pretrained(folder))")
    return AutoImageProcessor.from_pretrained(model_dir)


def is_image_model(model_dir: Path) -> bool:
    """Whether config.json names a model type whose adapter takes images."""
    from pruning.models.architectures import ADAPTERS

    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    return any(model_type in adapter.model_types and adapter.modality == "image" for adapter in ADAPTERS)
