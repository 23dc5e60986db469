"""The registry of pruning methods behind one interface.

Every method module defines a pydantic config `CONFIG` (a `SparsityConfig` or `StructuredBudget` with a literal
`method` name) and
  prune_layer(weight (d_out × d_in, fp32), statistics: InputStatistics, config) -> LayerResult
(structured methods also take the layer's column groups). Adding a method is its module plus one entry in
`_MODULES`; the engine, the job config, the flows and the command line's help pick it up from here.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Union

import torch
from pydantic import Field, TypeAdapter

from pruning.methods import (
    admm,
    apt,
    magnitude,
    oats,
    osscar,
    sparsegpt,
    structured_magnitude,
    structured_wanda,
    wanda,
)
from pruning.methods.base import InputStatistics, LayerResult
from pruning.methods.sparsity import SparsityConfig
from pruning.methods.structured import ColumnGroups, StructuredBudget

_MODULES = (magnitude, wanda, sparsegpt, oats, apt, admm, osscar, structured_magnitude, structured_wanda)

# method name (the config's literal `method`) -> its module
METHOD_MODULES: dict[str, ModuleType] = {module.CONFIG.model_fields["method"].default: module for module in _MODULES}

if TYPE_CHECKING:
    MethodConfig = SparsityConfig | StructuredBudget
else:  # one tagged union of every method's config, told apart by `method`
    MethodConfig = Annotated[Union[tuple(module.CONFIG for module in _MODULES)], Field(discriminator="method")]


def needs_calibration(config: MethodConfig) -> bool:
    """Whether a method config reads calibration inputs; data-free ones are pruned without any forward pass."""
    return config.needs_calibration


def prune_layer(weight: torch.Tensor, statistics: InputStatistics | None, config: MethodConfig,
                groups: ColumnGroups | None = None) -> LayerResult:
    """Dispatch one linear layer to its method's solver; structured methods also take the layer's input
    column groups (see `pruning.methods.structured`). `statistics` may be None only for data-free methods."""
    if statistics is None and config.needs_calibration:
        raise ValueError(f"{config.method} needs the layer's input statistics")
    module = METHOD_MODULES[config.method]
    if isinstance(config, StructuredBudget):
        if groups is None:
            raise ValueError(f"{config.method} is structured: it prunes a sub-block's second linear by column groups")
        return module.prune_layer(weight, statistics, config, groups)  # type: ignore[no-any-return]
    return module.prune_layer(weight, statistics, config)  # type: ignore[no-any-return]


def is_structured(method: str) -> bool:
    """Whether a method removes whole neurons / KV groups (and yields a physically smaller model)."""
    return method in METHOD_MODULES and issubclass(METHOD_MODULES[method].CONFIG, StructuredBudget)


def method_summaries() -> dict[str, str]:
    """Each method's name and the first paragraph of its module's docstring, for help texts."""
    return {name: " ".join((module.__doc__ or name).strip().split("\n\n")[0].split())
            for name, module in METHOD_MODULES.items()}


def method_config(fields: dict[str, Any]) -> MethodConfig:
    """Validate a method config from plain fields, e.g. {"method": "wanda", "sparsity": 0.5}."""
    return TypeAdapter(MethodConfig).validate_python(fields)
