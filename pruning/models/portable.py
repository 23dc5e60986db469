"""Model folders that transformers 4.5x and 5.x both read the same way.

transformers 5 writes `rope_parameters` and `dtype` where 4.x reads `rope_theta`/`rope_scaling` and `torch_dtype`:
without the legacy keys transformers 4.57 loads SmolLM2 with rope theta 10000 instead of 100000 (perplexity +25%,
no error). Its tokenizer config names `TokenizersBackend` (a 5.x-only class), keeps `model_max_length` at 1e30 and
saves the session's `local_files_only`/`is_local`. `make_portable` adds the legacy keys beside the new ones and
removes what only the writing session meant; it is idempotent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pruning.io import write_json

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Written by one session about itself (the GGUF's display name, where its files came from): never a model's property.
SESSION_KEYS = ("_model_name_or_path", "_name_or_path", "_commit_hash", "local_files_only", "is_local")
# A class both 4.x and 5.x know that reads tokenizer.json (5.x maps it to TokenizersBackend).
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
UNSET_MAX_LENGTH = 1e29  # transformers' VERY_LARGE_INTEGER (1e30) means "unknown"


def _legacy_rope(parameters: dict[str, Any]) -> dict[str, Any]:
    """4.x keys for one set of rope parameters: theta, and `rope_scaling` for anything but the default rope."""
    legacy: dict[str, Any] = {"rope_theta": parameters["rope_theta"]} if "rope_theta" in parameters else {}
    if parameters.get("rope_type", "default") != "default":
        legacy["rope_scaling"] = {key: value for key, value in parameters.items() if key != "rope_theta"}
    return legacy


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with 4.x's `rope_theta` (and `rope_scaling`, `rope_local_base_freq` for models with a rope per
    layer type, as Gemma 3) and `torch_dtype` beside 5.x's `rope_parameters` and `dtype`."""
    portable = {key: value for key, value in config.items() if key not in SESSION_KEYS}
    rope = portable.get("rope_parameters")
    if isinstance(rope, dict) and all(isinstance(value, dict) for value in rope.values()):  # {layer type: params}
        portable.update(_legacy_rope(rope.get("full_attention", {})))
        if "rope_theta" in rope.get("sliding_attention", {}):
            portable["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    elif isinstance(rope, dict):
        portable.update(_legacy_rope(rope))
    if "dtype" in portable:
        portable["torch_dtype"] = portable["dtype"]
    return portable


def portable_tokenizer_config(config: dict[str, Any], max_positions: int | None) -> dict[str, Any]:
    """tokenizer_config.json with a class both versions know and the model's real context as its maximum length."""
    portable = {key: value for key, value in config.items() if key not in SESSION_KEYS}
    if portable.get("tokenizer_class") == "TokenizersBackend":
        portable["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    if max_positions is not None and float(portable.get("model_max_length", UNSET_MAX_LENGTH)) >= UNSET_MAX_LENGTH:
        portable["model_max_length"] = max_positions
    return portable


def make_portable(directory: Path) -> None:
    """Rewrite the folder's config.json and tokenizer_config.json (where present) in their portable form."""
    config_path, tokenizer_path = directory / CONFIG_FILE, directory / TOKENIZER_CONFIG_FILE
    config = json.loads(config_path.read_text())
    write_json(config_path, portable_config(config))
    if tokenizer_path.is_file():
        write_json(tokenizer_path, portable_tokenizer_config(json.loads(tokenizer_path.read_text()),
                                                             config.get("max_position_embeddings")))
