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

from pruning import apt, magnitude, oats, sparsegpt, wanda
from pruning.statistics import InputStatistics, LayerResult

METHOD_MODULES: dict[str, ModuleType] = {
    "magnitude": magnitude,
    "wanda": wanda,
    "sparsegpt": sparsegpt,
    "oats": oats,
    "apt": apt,
}

MethodConfig = Annotated[
    Union[magnitude.MagnitudeConfig, wanda.WandaConfig, sparsegpt.SparseGPTConfig, oats.OATSConfig,
          apt.APTConfig],
    Field(discriminator="method"),
]


def prune_layer(weight: torch.Tensor, statistics: InputStatistics, config: MethodConfig) -> LayerResult:
    """Dispatch one linear layer to its method's solver."""
    return METHOD_MODULES[config.method].prune_layer(weight, statistics, config)  # type: ignore[no-any-return]


def method_config(fields: dict[str, Any]) -> MethodConfig:
    """Validate a method config from plain fields, e.g. {"method": "wanda", "sparsity": 0.5}."""
    return TypeAdapter(MethodConfig).validate_python(fields)
