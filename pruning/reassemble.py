"""Save a pruned model as a plain Hugging Face directory plus `pruneflow.json`, atomically."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pruning.architectures import adapter_for
from pruning.io import atomic_directory, write_json

RECORD_FILE = "pruneflow.json"


def decoder_linear_sparsity(model: nn.Module) -> dict[str, float]:
    """Achieved sparsity over all decoder-block linears (embeddings and lm_head excluded)."""
    adapter = adapter_for(model)
    zeros = total = 0
    for block in adapter.blocks(model):
        for name in adapter.linear_names:
            weight = cast(torch.Tensor, block.get_submodule(name).weight)
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return {"decoder_linear_sparsity": zeros / total, "decoder_linear_parameters": total}


def software_versions() -> dict[str, str]:
    import transformers

    from pruning import __version__

    return {"pruneflow": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def save_pruned_model(model: nn.Module, tokenizer: Any, output_dir: Path, record: dict[str, Any]) -> None:
    """Write safetensors weights, config, tokenizer and the run record; nothing appears until all is written."""
    with atomic_directory(output_dir) as staging:
        cast(Any, model).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json(staging / RECORD_FILE, record)
