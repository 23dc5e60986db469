"""How the engine and the evaluator reach a model's weights: a whole model in memory, or one block at a time
from a safetensors checkpoint on disk.

`StreamedModel` builds the model's module tree from config.json with every parameter on the meta device
(buffers such as rotary tables are computed as usual), then materializes on request only the tensors it
needs: the stem (embeddings, final norm: everything outside the blocks but the output head), one block, or
the head. Releasing a part turns its parameters back into meta tensors, so memory holds one block at a time
whatever the model's depth. `InMemoryModel` gives the same interface over a model that is already loaded.
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from pruning.errors import ConfigError
from pruning.models.architectures import ArchitectureAdapter, adapter_for
from pruning.models.checkpoint import CheckpointReader
from pruning.models.vision import is_image_model, vision_class


class ModelAccess(Protocol):
    """What the engine needs of a model: its module tree, its adapter, and parts loaded on demand."""

    model: nn.Module
    adapter: ArchitectureAdapter

    @property
    def num_blocks(self) -> int: ...

    def load_stem(self) -> None: ...

    def release_stem(self) -> None: ...

    def load_head(self) -> None: ...

    def release_head(self) -> None: ...

    def load_block(self, index: int) -> nn.Module: ...

    def release_block(self, index: int) -> None: ...


def block_prefix(adapter: ArchitectureAdapter, index: int) -> str:
    return f"{adapter.blocks_path}.{index}"


def _set_parameter(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


class InMemoryModel:
    """A loaded model behind the `ModelAccess` interface: every part is always there."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.adapter = adapter_for(model)

    @property
    def num_blocks(self) -> int:
        return len(self.adapter.blocks(self.model))

    def load_stem(self) -> None:
        return None

    def release_stem(self) -> None:
        return None

    def load_head(self) -> None:
        return None

    def release_head(self) -> None:
        return None

    def load_block(self, index: int) -> nn.Module:
        return self.adapter.blocks(self.model)[index]

    def release_block(self, index: int) -> None:
        return None


class StreamedModel:
    """A causal LM (or a vision transformer) read part by part from a safetensors checkpoint (see the module
    docstring).

    Every parameter of the module tree must be in the checkpoint with its shape (a head tied to the input
    embeddings may be absent), and every tensor of the checkpoint must belong to the tree: otherwise the
    constructor fails, naming the tensors, before any weight is read.
    """

    def __init__(self, directory: Path, trust_remote_code: bool = False) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.directory = Path(directory)
        self.reader = CheckpointReader(self.directory)
        self.config = AutoConfig.from_pretrained(self.directory, trust_remote_code=trust_remote_code)
        with init_empty_weights(include_buffers=False):
            self.model = (vision_class(self.config)(self.config) if is_image_model(self.directory) else
                          AutoModelForCausalLM.from_config(self.config, trust_remote_code=trust_remote_code))
        self.model.eval()
        self.adapter = adapter_for(self.model)
        self.dtype = self.reader.storage_dtype()
        self.sources = self._tensor_sources()
        self._loaded: dict[str, torch.Tensor] = {}  # checkpoint tensors backing materialized parameters
        for name, buffer in self.model.named_buffers():
            if name in self.reader:  # a stored buffer (most are recomputed from the config and not stored)
                buffer.data = self.reader.read(name).to(buffer.dtype)
        # The language-model head (evaluated in chunks); a vision model's classifier belongs to the stem.
        head = cast(nn.Module | None, cast(Any, self.model).get_output_embeddings())
        head_name = next((name for name, module in self.model.named_modules() if module is head), "")
        self.head_parameters = [f"{head_name}.{name}" for name, _ in head.named_parameters()] if head else []
        blocks = f"{self.adapter.blocks_path}."
        self.stem_parameters = [name for name in self.sources
                                if not name.startswith(blocks) and name not in self.head_parameters]

    def _tensor_sources(self) -> dict[str, str]:
        """Parameter name -> checkpoint tensor name; fails on missing, misshapen or unexpected tensors."""
        tied = dict(getattr(self.model, "_tied_weights_keys", None) or {})
        tie_embeddings = bool(getattr(self.config.get_text_config(), "tie_word_embeddings", False))
        sources, missing, misshapen = {}, [], []
        for name, parameter in self.model.named_parameters(remove_duplicate=False):
            source = name
            if name not in self.reader and tie_embeddings:
                source = next((target for pattern, target in tied.items() if re.fullmatch(pattern, name)), name)
            if source not in self.reader:
                missing.append(name)
            elif self.reader.shape(source) != list(parameter.shape):
                misshapen.append(f"{source} {self.reader.shape(source)} (model expects {list(parameter.shape)})")
            sources[name] = source
        buffers = {name for name, _ in self.model.named_buffers()}
        ignored = [str(pattern) for pattern in getattr(self.model, "_keys_to_ignore_on_load_unexpected", None) or []]
        unexpected = [name for name in self.reader.names if name not in sources.values() and name not in buffers
                      and not any(re.search(pattern, name) or fnmatch.fnmatch(name, pattern) for pattern in ignored)]
        problems = []
        if missing:
            problems.append(f"missing tensors {_sample(missing)}")
        if misshapen:
            problems.append(f"tensors of the wrong shape {_sample(misshapen)}")
        if unexpected:
            problems.append(f"unexpected tensors {_sample(unexpected)}")
        if problems:
            raise ConfigError(f"model: the checkpoint in '{self.directory}' does not match its config.json "
                             f"({type(self.model).__name__}): {'; '.join(problems)}; re-save or re-download it")
        return sources

    @property
    def num_blocks(self) -> int:
        return len(self.adapter.blocks(self.model))

    def parameter_count(self) -> int:
        """Parameters of the model, a tied head counted once."""
        return sum(math.prod(self.reader.shape(source)) for source in set(self.sources.values()))

    def _load(self, names: list[str]) -> None:
        """Materialize parameters; one read per checkpoint tensor, shared by the parameters it feeds (a tied head
        takes the input embeddings' tensor when they are loaded)."""
        missing = sorted({self.sources[name] for name in names} - set(self._loaded))
        self._loaded.update(self.reader.read_many(missing))
        for name in names:
            _set_parameter(self.model, name, self._loaded[self.sources[name]])

    def _release(self, names: list[str]) -> None:
        for name in names:
            parameter = self.model.get_parameter(name)
            _set_parameter(self.model, name, torch.empty_like(parameter, device="meta"))
        in_use = {self.sources[name] for name, parameter in self.model.named_parameters(remove_duplicate=False)
                  if parameter.device.type != "meta"}
        self._loaded = {source: tensor for source, tensor in self._loaded.items() if source in in_use}

    def load_stem(self) -> None:
        self._load(self.stem_parameters)

    def release_stem(self) -> None:
        self._release(self.stem_parameters)

    def load_head(self) -> None:
        self._load(self.head_parameters)

    def release_head(self) -> None:
        self._release(self.head_parameters)

    def block_parameters(self, index: int) -> list[str]:
        prefix = f"{block_prefix(self.adapter, index)}."
        return [name for name in self.sources if name.startswith(prefix)]

    def load_block(self, index: int) -> nn.Module:
        """Block `index` with its stored weights, on the CPU, in the stored dtype."""
        self._load(self.block_parameters(index))
        return self.adapter.blocks(self.model)[index]

    def release_block(self, index: int) -> None:
        self._release(self.block_parameters(index))

    def stem_tensors(self) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors outside the blocks, as stored (a tied head stays absent)."""
        blocks = f"{self.adapter.blocks_path}."
        return self.reader.read_many([name for name in self.reader.names if not name.startswith(blocks)])


def block_state(block: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A block's parameters and persistent buffers under their full names, as they are now."""
    return {f"{prefix}.{name}": tensor.detach() for name, tensor in block.state_dict().items()}


def _sample(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
