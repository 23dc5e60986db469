"""The registry of pruning methods behind one interface.

Every method module defines a pydantic config (a `SparsityConfig` with a literal `method` name) and
  prune_layer(weight (d_out × d_in, fp32), statistics: InputStatistics, config) -> LayerResult.
Adding a method means adding its module here; the engine, the flows and the CLI pick it up.
"""

from __future__ import annotations

from types import ModuleType
from typing import Annotated, Any, Union

import torch
from pydantic import Field, TypeAdapter

from pruning import admm, apt, magnitude, oats, osscar, sparsegpt, structured_magnitude, structured_wanda, wanda
from pruning.statistics import InputStatistics, LayerResult
from pruning.structured import ColumnGroups, StructuredBudget

METHOD_MODULES: dict[str, ModuleType] = {
    "magnitude": magnitude,
    "wanda": wanda,
    "sparsegpt": sparsegpt,
    "oats": oats,
    "apt": apt,
    "admm": admm,
    "osscar": osscar,
    "structured-magnitude": structured_magnitude,
    "structured-wanda": structured_wanda,
}

STRUCTURED_METHODS = ("osscar", "structured-magnitude", "structured-wanda")

MethodConfig = Annotated[
    Union[magnitude.MagnitudeConfig, wanda.WandaConfig, sparsegpt.SparseGPTConfig, oats.OATSConfig,
          apt.APTConfig, admm.ADMMConfig, osscar.OSSCARConfig, structured_magnitude.StructuredMagnitudeConfig,
          structured_wanda.StructuredWandaConfig],
    Field(discriminator="method"),
]


def needs_calibration(config: MethodConfig) -> bool:
    """Whether a method config reads calibration inputs; data-free ones are pruned without any forward pass."""
    return config.needs_calibration


def prune_layer(weight: torch.Tensor, statistics: InputStatistics | None, config: MethodConfig,
                groups: ColumnGroups | None = None) -> LayerResult:
    """Dispatch one linear layer to its method's solver; structured methods also take the layer's input
    column groups (see `pruning.structured`). `statistics` may be None only for data-free methods."""
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
    return method in STRUCTURED_METHODS


def method_config(fields: dict[str, Any]) -> MethodConfig:
    """Validate a method config from plain fields, e.g. {"method": "wanda", "sparsity": 0.5}."""
    return TypeAdapter(MethodConfig).validate_python(fields)
