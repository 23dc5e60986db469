"""Structured units of a block: their column groups, the rows that follow a removed group, and slicing a
model whose removed groups are zero into a physically smaller one that `from_pretrained` loads as is."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from pruning.errors import ConfigError
from pruning.methods.structured import ColumnGroups, StructuredBudget
from pruning.models.architectures import ArchitectureAdapter, HeadLayout, StructuredUnit, adapter_for, head_layout


def unit_is_pruned(unit: StructuredUnit, budget: StructuredBudget) -> bool:
    return budget.attention_groups > 0 if unit.kind == "attention" else budget.sparsity > 0


def structured_layout(adapter: ArchitectureAdapter, method: object, config: Any) -> HeadLayout | None:
    """For a structured method, the model's head layout once the budget is checked against the model
    (failing before any work if the model cannot be pruned, or described after pruning, as asked);
    None for other methods."""
    if not isinstance(method, StructuredBudget):
        return None
    if not adapter.structured_units:
        raise ConfigError(f"method: structured pruning is not available for {adapter.family} models; "
                         "use an unstructured method")
    layout = head_layout(config)
    check_structured_support(adapter, method, layout)
    return layout


def check_structured_support(adapter: ArchitectureAdapter, budget: StructuredBudget, layout: HeadLayout) -> None:
    if budget.sparsity > 0 and not any(unit.kind == "mlp" for unit in adapter.structured_units):
        raise ConfigError(f"method.sparsity: a {adapter.family} config cannot describe a narrower MLP (its width is "
                         "hidden_size x an integer mlp_ratio), so MLP neurons cannot be removed; set sparsity: 0 and "
                         "remove attention heads (attention_groups), or use an unstructured method")
    if budget.attention_groups and not adapter.explicit_head_dim:
        raise ConfigError(f"method.attention_groups: removing attention heads needs a config with an explicit "
                         f"head_dim (Llama-family); a {adapter.family} config derives it from hidden_size / heads, "
                         "so the smaller model could not be described. Set attention_groups: 0")
    if budget.attention_groups >= layout.num_key_value_heads:
        raise ConfigError(f"method.attention_groups: {budget.attention_groups} would remove every one of the "
                         f"{layout.num_key_value_heads} KV groups of a block; use fewer")


def unit_groups(block: nn.Module, adapter: ArchitectureAdapter, unit: StructuredUnit,
                layout: HeadLayout) -> ColumnGroups:
    """The target's input column groups: KV groups (queries_per_group·head_dim columns each) or neurons."""
    if unit.kind == "attention":
        return ColumnGroups("attention", layout.queries_per_group * layout.head_dim, layout.num_key_value_heads)
    return ColumnGroups("mlp", 1, int(adapter.read_weight(block.get_submodule(unit.target)).shape[1]))


def producer_rows(segments: tuple[str, ...], groups: ColumnGroups, layout: HeadLayout,
                  selected: torch.Tensor) -> torch.Tensor:
    """Rows of a producer (made of `segments`) that belong to the `selected` groups."""
    sizes = {"q": layout.num_attention_heads * layout.head_dim, "kv": layout.num_key_value_heads * layout.head_dim,
             "neuron": groups.count}
    widths = {"q": layout.queries_per_group * layout.head_dim, "kv": layout.head_dim, "neuron": 1}
    rows, offset = [], 0
    for segment in segments:
        width = widths[segment]
        rows.append(offset + (selected.unsqueeze(1) * width + torch.arange(width)).flatten())
        offset += sizes[segment]
    return torch.cat(rows)


def removed_groups(block: nn.Module, adapter: ArchitectureAdapter, unit: StructuredUnit,
                   groups: ColumnGroups) -> torch.Tensor:
    """Groups whose target columns are all zero."""
    weight = adapter.read_weight(block.get_submodule(unit.target))
    dead = (weight == 0).all(dim=0).view(groups.count, groups.size).all(dim=1)
    return torch.nonzero(dead).flatten()


def zero_producers(block: nn.Module, adapter: ArchitectureAdapter, unit: StructuredUnit, groups: ColumnGroups,
                   layout: HeadLayout, removed: torch.Tensor) -> list[str]:
    """Zero the producer rows of the removed groups (they feed only zero columns); return the producers."""
    for name, segments in unit.producers:
        linear = block.get_submodule(name)
        weight = adapter.read_weight(linear)
        weight[producer_rows(segments, groups, layout, removed)] = 0.0
        adapter.write_weight(linear, weight)
    return [name for name, _ in unit.producers]


def _slice_linear(linear: nn.Module, adapter: ArchitectureAdapter, rows: torch.Tensor | None,
                  columns: torch.Tensor | None) -> None:
    """Keep only `rows` (outputs, with the bias) and/or `columns` (inputs) of a linear, in its own layout."""
    weight = adapter.read_weight(linear)
    if rows is not None:
        weight = weight[rows]
    if columns is not None:
        weight = weight[:, columns]
    parameter = cast(torch.Tensor, linear.weight)
    stored = weight.t() if adapter.transposed_weights else weight
    linear.weight = nn.Parameter(stored.to(parameter.dtype).contiguous(), requires_grad=False)
    bias = cast(torch.Tensor | None, getattr(linear, "bias", None))
    if rows is not None and bias is not None:
        linear.bias = nn.Parameter(bias.detach()[rows].contiguous(), requires_grad=False)
    if isinstance(linear, nn.Linear):
        linear.out_features, linear.in_features = weight.shape
    elif hasattr(linear, "nf"):  # GPT-2 Conv1D
        setattr(linear, "nf", int(weight.shape[0]))  # noqa: B010 (Conv1D has no typed `nf`)


def _complement(count: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(count, dtype=torch.bool)
    keep[removed] = False
    return torch.nonzero(keep).flatten()


def shrink_block(block: nn.Module, adapter: ArchitectureAdapter, layout: HeadLayout) -> dict[str, int]:
    """Slice every removed group (all-zero target columns) out of one block in place; return the removed counts
    per unit kind."""
    counts = {}
    for unit in adapter.structured_units:
        groups = unit_groups(block, adapter, unit, layout)
        removed = removed_groups(block, adapter, unit, groups)
        counts[unit.kind] = int(removed.numel())
        if not removed.numel():
            continue
        kept = _complement(groups.count, removed)
        for name, segments in unit.producers:
            _slice_linear(block.get_submodule(name), adapter, producer_rows(segments, groups, layout, kept), None)
        _slice_linear(block.get_submodule(unit.target), adapter, None, groups.columns(kept))
    return counts


def shrunk_config(config: Any, adapter: ArchitectureAdapter, layout: HeadLayout,
                  counts_per_block: list[dict[str, int]]) -> None:
    """Update `config` in place for blocks shrunk by `shrink_block`.

    Every block must remove the same number of groups per unit kind (budgets are uniform), since the
    config holds one `intermediate_size` and one head count."""
    counts = {}
    for kind in {kind for block_counts in counts_per_block for kind in block_counts}:
        values = {block_counts.get(kind, 0) for block_counts in counts_per_block}
        if len(values) != 1:
            raise ConfigError(f"blocks removed different numbers of {kind} groups ({sorted(values)}); a Hugging Face "
                             "config holds one size for all blocks")
        counts[kind] = values.pop()
    if counts.get("mlp"):
        key = adapter.intermediate_size_key
        current = getattr(config, key, None) or 4 * config.hidden_size  # GPT-2: n_inner None means 4·n_embd
        setattr(config, key, int(current) - counts["mlp"])
    if counts.get("attention"):
        config.head_dim = layout.head_dim
        config.num_key_value_heads = layout.num_key_value_heads - counts["attention"]
        config.num_attention_heads = layout.num_attention_heads - counts["attention"] * layout.queries_per_group


def shrink_model(model: nn.Module, adapter: ArchitectureAdapter) -> dict[str, int]:
    """Slice every removed group out of a model in memory and update its config (see `shrink_block`);
    return the removed counts per kind."""
    config = cast(Any, model).config
    layout = head_layout(config)
    counts_per_block = [shrink_block(block, adapter, layout) for block in adapter.blocks(model)]
    shrunk_config(config, adapter, layout, counts_per_block)
    return counts_per_block[0] if counts_per_block else {}


def shrink_record(model: nn.Module) -> dict[str, Any]:
    """Shrink `model` in place (see `shrink_model`); what was removed and the parameter counts before/after."""
    before = sum(parameter.numel() for parameter in model.parameters())
    counts = shrink_model(model, adapter_for(model))
    return {"removed_groups_per_block": counts, "parameters_before": before,
            "parameters_after": sum(parameter.numel() for parameter in model.parameters())}
