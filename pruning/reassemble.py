"""Save a pruned model as a plain Hugging Face directory plus `pruneflow.json`, atomically."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pruning.architectures import adapter_for
from pruning.factored import FACTORED_DIRECTORY, save_factored
from pruning.io import atomic_directory, write_json
from pruning.statistics import SparseLowRank

RECORD_FILE = "pruneflow.json"


def decoder_linear_sparsity(model: nn.Module, factors: dict[str, SparseLowRank] | None = None) -> dict[str, float]:
    """Fraction of the decoder-block linears' parameters removed (embeddings and lm_head excluded), and the
    model's parameter count before and after (tied embeddings counted once).

    A linear with a sparse + low-rank form (full name in `factors`) keeps nnz(S) + r(d_out + d_in) parameters.
    """
    adapter = adapter_for(model)
    factors = factors or {}
    removed = total = 0
    for index, block in enumerate(adapter.blocks(model)):
        for name in adapter.linear_names:
            weight = cast(torch.Tensor, block.get_submodule(name).weight)
            term = factors.get(f"{adapter.blocks_path}.{index}.{name}")
            removed += weight.numel() - term.kept_parameters if term is not None else int((weight == 0).sum())
            total += weight.numel()
    model_parameters = sum(parameter.numel() for parameter in model.parameters())
    return {"decoder_linear_sparsity": removed / total, "decoder_linear_parameters": total,
            "model_parameters": model_parameters, "remaining_parameters": model_parameters - removed}


def software_versions() -> dict[str, str]:
    import transformers

    from pruning import __version__

    return {"pruneflow": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def save_pruned_model(model: nn.Module, tokenizer: Any, output_dir: Path, record: dict[str, Any],
                      factors: dict[str, SparseLowRank] | None = None) -> None:
    """Write safetensors weights, config, tokenizer and the run record; nothing appears until all is written.

    With `factors` (sparse + low-rank results), `factored/` beside them holds the factored checkpoint
    that `pruning.load_compressed` reads.
    """
    with atomic_directory(output_dir) as staging:
        cast(Any, model).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if factors:
            save_factored(model, factors, staging / FACTORED_DIRECTORY)
        write_json(staging / RECORD_FILE, record)
