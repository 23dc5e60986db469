"""The factored form of a sparse + low-rank model: `SparseLowRankLinear` modules and their checkpoint.

A factored linear computes  y = x·Sᵀ + (x·Vᵀ)·Uᵀ + b  with S sparse (d_out × d_in), U (d_out × r),
V (r × d_in). On disk S is a bitmask (1 bit per weight, row-major) plus its nonzero values, so S costs
d_out·d_in/8 + 4·nnz(S) bytes in fp32 instead of 4·d_out·d_in. Everything else of the model is stored as
in its dense checkpoint; `load_compressed` rebuilds the Hugging Face model with the factored modules.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from pruning.errors import ConfigError
from pruning.io import write_json
from pruning.methods.base import SparseLowRank
from pruning.models.checkpoint import INDEX_FILE, CheckpointReader, ShardedWriter

FACTORED_DIRECTORY = "factored"
FACTORED_WEIGHTS = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "pruneflow-sparse-low-rank-v1"
# config.json's model_type: one no transformers Auto class knows, so that `from_pretrained` on the folder fails
# ("unrecognized model") instead of loading a model whose factored linears are freshly initialised.
FACTORED_MODEL_TYPE = "pruneflow-sparse-low-rank"
FACTORED_README = """# Sparse + low-rank checkpoint (pruneflow)

Every factored linear of this model is stored as W = S + U·V: S as a bitmask plus its nonzero values, U and V
dense. This is not a Hugging Face model folder: `AutoModelForCausalLM.from_pretrained` refuses it on purpose.
Load it with pruneflow, which rebuilds the model with `SparseLowRankLinear` modules:

```python
from pruning import load_compressed
model = load_compressed("<this folder>")
```

The merged (dense-layout) model is the folder above this one and loads with any transformers version.
The base model's configuration is `base_config` in `config.json`.
"""
SparseFormat = Literal["csr", "dense"]


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls its CSR support "beta"; CPU matmuls work
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return weight.detach().to_sparse_csr()


def csr_times(sparse: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """x·Sᵀ for a CSR S, as (S·xᵀ)ᵀ: CSR matmuls need the sparse operand first."""
    return (sparse @ flat.t()).t()


class SparseLowRankLinear(nn.Module):
    """y = x·Sᵀ + (x·Vᵀ)·Uᵀ + b, with S kept as a CSR tensor (or dense, for comparison)."""

    def __init__(self, sparse: torch.Tensor, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None,
                 sparse_format: SparseFormat = "csr") -> None:
        super().__init__()
        self.out_features, self.in_features = sparse.shape
        self.sparse_format = sparse_format
        if sparse_format == "csr":
            sparse = to_csr(sparse)
        # Not persistent: the checkpoint stores S as bitmask + values (see `save_factored`).
        self.register_buffer("sparse", sparse, persistent=False)
        self.up = nn.Parameter(up, requires_grad=False)
        self.down = nn.Parameter(down, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        flat = inputs.reshape(-1, self.in_features)
        sparse = cast(torch.Tensor, self.sparse)
        outputs = csr_times(sparse, flat) if self.sparse_format == "csr" else flat @ sparse.t()
        outputs = outputs + (flat @ self.down.t()) @ self.up.t()
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs.reshape(*inputs.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.up.shape[1]}, S={self.sparse_format}"


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Row-major bits, 8 per uint8, least significant bit first."""
    flat = mask.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (flat.view(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    bits = (packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten()[: shape[0] * shape[1]].view(shape).bool()


def _factored_tensors(name: str, factors: SparseLowRank, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    mask = factors.sparse != 0
    return {f"{name}.sparse_mask": pack_mask(mask), f"{name}.sparse_values": factors.sparse[mask].to(dtype),
            f"{name}.up": factors.up.to(dtype).contiguous(), f"{name}.down": factors.down.to(dtype).contiguous()}


def factored_shard(tensors: dict[str, torch.Tensor], factors: dict[str, SparseLowRank]) -> dict[str, torch.Tensor]:
    """A shard's tensors (full names) with the weight of every linear in `factors` (full names) replaced by its
    factored form, in the dtype the weight was stored in."""
    shard = {key: tensor for key, tensor in tensors.items()
             if not (key.endswith(".weight") and key.removesuffix(".weight") in factors)}
    for name, term in factors.items():
        shard.update(_factored_tensors(name, term, tensors[f"{name}.weight"].dtype))
    return shard


def factored_metadata(factors: dict[str, SparseLowRank]) -> dict[str, str]:
    """Index metadata that marks a factored checkpoint and lists its factored linears' shapes."""
    return {"format": FORMAT_NAME, "linears": json.dumps({name: list(term.sparse.shape)
                                                          for name, term in factors.items()})}


def save_factored_config(config: Any, directory: Path) -> None:
    """config.json of a factored folder (the base configuration under `base_config`, a model_type of its own) and
    the README that says how to load it."""
    write_json(directory / CONFIG_FILE, {"model_type": FACTORED_MODEL_TYPE, "format": FORMAT_NAME,
                                         "loader": "pruning.load_compressed", "base_config": config.to_dict()})
    (directory / "README.md").write_text(FACTORED_README)


def _base_config(directory: Path) -> Any:
    from transformers import AutoConfig

    marker = json.loads((directory / CONFIG_FILE).read_text())
    if marker.get("model_type") != FACTORED_MODEL_TYPE:
        raise ConfigError(f"{directory}: config.json has model_type '{marker.get('model_type')}', expected "
                          f"'{FACTORED_MODEL_TYPE}'; a full model folder loads with from_pretrained")
    base = dict(marker["base_config"])
    return AutoConfig.for_model(base.pop("model_type"), **base)


def save_factored(model: nn.Module, factors: dict[str, SparseLowRank], directory: Path) -> None:
    """Write config and weights of a model in memory with every linear in `factors` (full names) stored factored.

    Tensors that share storage (tied embeddings) are written once; the loader re-ties them.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[key] = tensor
    directory.mkdir(parents=True, exist_ok=True)
    save_factored_config(cast(Any, model).config, directory)
    writer = ShardedWriter(directory, 1, metadata=factored_metadata(factors))
    writer.write(0, factored_shard(tensors, factors))
    writer.finish()


def load_compressed(directory: str | Path, sparse_format: SparseFormat = "csr") -> nn.Module:
    """Rebuild a factored checkpoint (a pruned model's `factored/` directory, or the model directory that holds
    one) with `SparseLowRankLinear` modules in place of the factored linears."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if (directory / FACTORED_DIRECTORY).is_dir():
        directory = directory / FACTORED_DIRECTORY
    if not (directory / INDEX_FILE).is_file() and not (directory / FACTORED_WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory}: no factored checkpoint; one is written by methods with a sparse + "
                                "low-rank result (oats) under <output_dir>/factored")
    reader = CheckpointReader(directory)
    if reader.metadata.get("format") != FORMAT_NAME:
        raise ConfigError(f"{directory}: format '{reader.metadata.get('format')}', expected '{FORMAT_NAME}'")
    tensors = {name: reader.read(name) for name in reader.names}
    shapes = json.loads(reader.metadata["linears"])
    dtype = tensors[f"{next(iter(shapes))}.up"].dtype if shapes else next(iter(tensors.values())).dtype
    model = AutoModelForCausalLM.from_config(_base_config(directory)).to(dtype)
    for name, shape in shapes.items():
        mask = unpack_mask(tensors.pop(f"{name}.sparse_mask"), (shape[0], shape[1]))
        sparse = torch.zeros(shape, dtype=dtype)
        sparse[mask] = tensors.pop(f"{name}.sparse_values")
        bias = tensors.pop(f"{name}.bias", None)
        model.set_submodule(name, SparseLowRankLinear(sparse, tensors.pop(f"{name}.up"), tensors.pop(f"{name}.down"),
                                                      bias, sparse_format))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    # Keys left missing must be the factored modules' own or tied to a loaded tensor (lm_head to the embeddings).
    state = model.state_dict()
    loaded = {state[key].data_ptr() for key in tensors if key in state}
    untied = [key for key in missing if key.rsplit(".", 1)[0] not in shapes and state[key].data_ptr() not in loaded]
    if untied or unexpected:
        raise ConfigError(f"{directory}: missing {untied[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
