"""The sparsity target every method config shares: how much to prune and in which pattern."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from pruning.errors import ConfigError
from pruning.methods.masks import NMPattern


class SparsityConfig(BaseModel):
    """`sparsity` is the fraction of weights removed; `pattern` is 'unstructured' or N:M (N kept of every M).

    For N:M the sparsity follows from the pattern (1 − N/M); giving a different one is an error.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str  # each method's config narrows this to its literal name
    sparsity: float | None = None
    pattern: str = "unstructured"

    @field_validator("pattern")
    @classmethod
    def _pattern_is_known(cls, pattern: str) -> str:
        if pattern != "unstructured":
            NMPattern.parse(pattern)
        return pattern

    @field_validator("sparsity")
    @classmethod
    def _sparsity_is_a_fraction(cls, sparsity: float | None) -> float | None:
        if sparsity is not None and not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1) (fraction of weights removed); got {sparsity}")
        return sparsity

    @model_validator(mode="after")
    def _sparsity_matches_pattern(self) -> SparsityConfig:
        if self.nm is None:
            if self.sparsity is None:
                raise ConfigError("sparsity is required for unstructured pruning: a fraction in [0, 1), e.g. 0.5")
        elif self.sparsity is not None and abs(self.sparsity - self.nm.sparsity) > 1e-9:
            raise ConfigError(f"sparsity {self.sparsity} contradicts pattern {self.pattern}, which removes "
                             f"{self.nm.sparsity:g}; leave sparsity out for N:M patterns")
        return self

    @property
    def needs_calibration(self) -> bool:
        """Whether the method reads input statistics (data-free methods run no calibration forward)."""
        return True

    @property
    def nm(self) -> NMPattern | None:
        return None if self.pattern == "unstructured" else NMPattern.parse(self.pattern)

    @property
    def target_sparsity(self) -> float:
        return self.nm.sparsity if self.nm is not None else float(self.sparsity or 0.0)
