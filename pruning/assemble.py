"""Assemble the pruned checkpoint from the block store: a plain Hugging Face directory, one shard per block.

Block shards are hard-linked from the store when they can be used as they are (copied across file
systems); structured methods slice each block into its smaller shape first. The tensors outside the blocks
are copied from the source checkpoint as stored. Methods with a sparse + low-rank result also get
`factored/`, the factored checkpoint that `pruning.load_compressed` reads. Memory holds one block.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch

from pruning.blocks.store import BlockStore
from pruning.io import link_or_copy
from pruning.methods.base import SparseLowRank
from pruning.models.access import StreamedModel, block_prefix, block_state
from pruning.models.architectures import head_layout
from pruning.models.checkpoint import ShardedWriter, tensor_sizes
from pruning.models.factored import FACTORED_DIRECTORY, factored_metadata, factored_shard, save_factored_config
from pruning.models.portable import make_portable
from pruning.models.shrink import shrink_block, shrunk_config
from pruning.models.sources import TOKENIZER_FILES
from pruning.models.vision import PROCESSOR_FILE
from pruning.record import StructuredSummary

# Files of the source model directory that the pruned one keeps as they are: generation settings, tokenizer, and a
# vision model's image processor.
COPIED_FILES = ("generation_config.json", "chat_template*", PROCESSOR_FILE, *TOKENIZER_FILES)


def _all_factors(model: StreamedModel, store: BlockStore) -> dict[int, dict[str, SparseLowRank]]:
    by_block = {}
    for index in range(model.num_blocks):
        prefix = block_prefix(model.adapter, index)
        factors = store.factors(index)
        if factors:
            by_block[index] = {f"{prefix}.{name}": term for name, term in factors.items()}
    return by_block


def write_pruned_checkpoint(model: StreamedModel, store: BlockStore, directory: Path,
                            structured: bool) -> StructuredSummary | None:
    """Write the pruned model from `store` into `directory` (which must exist and be empty): weights, index,
    config, generation config, the tokenizer's files (copied), and `factored/` where the method made factors.

    For structured methods the removed groups are sliced away and the config updated; returns what was
    removed and the parameter counts before and after (None for other methods)."""
    num_blocks = model.num_blocks
    writer = ShardedWriter(directory, num_blocks + 1)
    config = copy.deepcopy(model.config)
    counts_per_block = []
    parameters_after = 0
    for index in range(num_blocks):
        if structured:
            block = model.load_block(index)
            store.load_weights(index, block, block_prefix(model.adapter, index))
            smaller = copy.deepcopy(block)
            model.release_block(index)
            counts_per_block.append(shrink_block(smaller, model.adapter, head_layout(model.config)))
            tensors = block_state(smaller, block_prefix(model.adapter, index))
            parameters_after += sum(tensor.numel() for tensor in tensors.values())
            writer.write(index, tensors)
        else:
            target = directory / writer.shard_name(index)
            link_or_copy(store.weights_path(index), target)
            writer.add(index, tensor_sizes(target))
    stem = model.stem_tensors()
    writer.write(num_blocks, stem)
    writer.finish()
    if structured:
        shrunk_config(config, model.adapter, head_layout(model.config), counts_per_block)
    config.save_pretrained(directory)
    for pattern in COPIED_FILES:
        for source in model.directory.glob(pattern):
            shutil.copyfile(source, directory / source.name)
    make_portable(directory)
    factors = _all_factors(model, store)
    if factors:
        _write_factored(model, store, directory / FACTORED_DIRECTORY, factors, stem, config)
    if not structured:
        return None
    return StructuredSummary(removed_groups_per_block=counts_per_block[0] if counts_per_block else {},
                             parameters_before=model.parameter_count(),
                             parameters_after=parameters_after + sum(tensor.numel() for tensor in stem.values()))


def _write_factored(model: StreamedModel, store: BlockStore, directory: Path,
                    factors: dict[int, dict[str, SparseLowRank]], stem: dict[str, torch.Tensor], config: Any) -> None:
    """The factored checkpoint: per block, its weights with the factored linears replaced by S (bitmask +
    values), U and V; the stem as in the main checkpoint."""
    from safetensors.torch import load_file

    directory.mkdir()
    writer = ShardedWriter(directory, model.num_blocks + 1,
                           metadata=factored_metadata({name: term for terms in factors.values()
                                                       for name, term in terms.items()}))
    for index in range(model.num_blocks):
        writer.write(index, factored_shard(load_file(str(store.weights_path(index))), factors.get(index, {})))
    writer.write(model.num_blocks, stem)
    writer.finish()
    save_factored_config(config, directory)
