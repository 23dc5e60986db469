"""`params.yaml`: the sweep's models x methods x sparsities, validated before any model is loaded.

  models: [{name: <path-safe name>, source: <model source>}, ...]
  prune:
    methods: [magnitude, wanda, sparsegpt]
    sparsity: 0.5              # or a list; used for unstructured patterns
    patterns: [unstructured]   # N:M patterns imply their own sparsity; structured methods (osscar, ...)
                               # remove `sparsity` of the MLP neurons (and options.attention_groups)
    options: {sparsegpt: {blocksize: 128}}
  calibration: {...}  evaluation: [{...}]  engine: {...}
  zero_shot: {tasks: [piqa, arc_easy], data_dir: ../shared/data, limit: 200}   # optional, lm-eval
  dense_baseline: true
  paths: {runs: runs, cache: .pruneflow/cache, artifacts: .pruneflow/artifacts}
  tracking: {experiment: pruneflow}
  dask: {enabled: false, address: null, workers: 2}
  bench: {devices: [cpu, cuda], prefill_batches: [1, 8], decode_batches: [1, 16], min_run_time: 5, in_sweep: false}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from pruning.config import (
    CalibrationConfig,
    EngineConfig,
    EvaluationConfig,
    PruneJob,
    ZeroShotConfig,
    describe_validation_error,
)
from pruning.errors import ConfigError
from pruning.evaluation.speed import SpeedSettings
from pruning.io import check_output_path
from pruning.methods.registry import METHOD_MODULES, is_structured
from pruning.models.sources import check_model_source


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PruneGrid(_Strict):
    methods: tuple[str, ...] = Field(min_length=1)
    sparsity: float | tuple[float, ...] = 0.5
    patterns: tuple[str, ...] = ("unstructured",)
    options: dict[str, dict[str, Any]] = {}
    engine: dict[str, dict[str, Any]] = Field(
        default={}, description="engine settings for one method's jobs, over the top-level engine section "
                                "(e.g. admm: {targets: dense})")

    @field_validator("methods")
    @classmethod
    def _methods_are_known(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [method for method in methods if method not in METHOD_MODULES]
        if unknown:
            raise ConfigError(f"unknown method {', '.join(unknown)}; available: {', '.join(METHOD_MODULES)}")
        return methods

    @field_validator("options", "engine")
    @classmethod
    def _options_name_known_methods(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = [method for method in options if method not in METHOD_MODULES]
        if unknown:
            raise ConfigError(f"options for unknown method {', '.join(unknown)} (misspelled?); "
                             f"available: {', '.join(METHOD_MODULES)}")
        return options

    @field_validator("sparsity")
    @classmethod
    def _sparsities_are_fractions(cls, sparsity: float | tuple[float, ...]) -> float | tuple[float, ...]:
        for value in sparsity if isinstance(sparsity, tuple) else (sparsity,):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"sparsity {value} is outside [0, 1) (fraction of weights removed)")
        return sparsity

    @property
    def sparsities(self) -> tuple[float, ...]:
        return self.sparsity if isinstance(self.sparsity, tuple) else (self.sparsity,)


class ModelEntry(_Strict):
    """A model of the sweep: a path-safe name (used in output paths and DVC stage names) and its source."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: str
    allow_unpinned: bool = False

    @model_validator(mode="after")
    def _source_is_valid(self) -> ModelEntry:
        check_model_source(self.source, "source", self.allow_unpinned)
        return self


class PathsConfig(_Strict):
    """Folders the sweep owns: its run folders under `runs` are replaced by each sweep."""

    runs: Path = Path("runs")
    cache: Path = Path(".pruneflow/cache")
    artifacts: Path = Path(".pruneflow/artifacts")

    @field_validator("runs", "cache", "artifacts")
    @classmethod
    def _writable(cls, folder: Path) -> Path:
        check_output_path(folder, "", directory=True, overwrite=True)
        return folder


class TrackingConfig(_Strict):
    experiment: str = "pruneflow"
    register_models: bool = False


class DaskConfig(_Strict):
    enabled: bool = False
    address: str | None = None
    workers: int = Field(default=2, gt=0)

    @property
    def threads_per_worker(self) -> int:
        """Each local worker's share of this machine's cores: workers that each start torch's default thread count
        oversubscribe the cores (two SparseGPT runs on 2 cores: a solve 35x slower than alone)."""
        return max(1, (os.cpu_count() or 1) // self.workers)


class BenchConfig(_Strict):
    """The bench stage: speed of every form on each device (pruning.evaluation.speed); `in_sweep` also runs it at the
    end of `pruneflow sweep`."""

    devices: tuple[Literal["cpu", "cuda"], ...] = ("cpu", "cuda")
    prefill_batches: tuple[PositiveInt, ...] = (1, 8)
    prefill_tokens: PositiveInt = 512
    decode_batches: tuple[PositiveInt, ...] = (1, 16)
    decode_new_tokens: PositiveInt = 32
    gemm_layers: PositiveInt = 3
    min_run_time: float = Field(default=5.0, gt=0)
    max_run_time: float = Field(default=20.0, gt=0)
    in_sweep: bool = False

    def settings(self) -> SpeedSettings:
        return SpeedSettings(prefill_batches=self.prefill_batches, prefill_tokens=self.prefill_tokens,
                             decode_batches=self.decode_batches, decode_new_tokens=self.decode_new_tokens,
                             gemm_layers=self.gemm_layers, min_run_time=self.min_run_time,
                             max_run_time=max(self.min_run_time, self.max_run_time))


class SweepParams(_Strict):
    models: tuple[ModelEntry, ...] = Field(min_length=1)
    prune: PruneGrid
    calibration: CalibrationConfig = CalibrationConfig()
    evaluation: tuple[EvaluationConfig, ...] = (EvaluationConfig(),)
    zero_shot: ZeroShotConfig | None = None
    engine: EngineConfig = EngineConfig()
    dense_baseline: bool = True
    paths: PathsConfig = PathsConfig()
    tracking: TrackingConfig = TrackingConfig()
    dask: DaskConfig = DaskConfig()
    bench: BenchConfig = BenchConfig()

    @field_validator("models")
    @classmethod
    def _model_names_are_unique(cls, models: tuple[ModelEntry, ...]) -> tuple[ModelEntry, ...]:
        names = [model.name for model in models]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"model name {', '.join(repeated)} appears more than once; names choose the output "
                             "folders, so give each model its own")
        return models

    def jobs(self) -> list[PruneJob]:
        """Every model x method x (pattern, sparsity) combination as a validated job."""
        return [job for model in self.models for method in self.prune.methods
                for job in self.method_jobs(model, method, self.paths.runs / model.name)]

    def method_jobs(self, model: ModelEntry, method: str, output_root: Path) -> list[PruneJob]:
        """One method's patterns x sparsities for one model, each in `output_root/<combination>`."""
        jobs = []
        for pattern in ("structured",) if is_structured(method) else self.prune.patterns:
            for sparsity in self.prune.sparsities if pattern in ("unstructured", "structured") else (None,):
                method_fields = {"method": method, "pattern": pattern, **self.prune.options.get(method, {}),
                                 **({"sparsity": sparsity} if sparsity is not None else {})}
                try:
                    jobs.append(PruneJob.model_validate({
                        "model": model.source, "allow_unpinned": model.allow_unpinned,
                        "method": method_fields, "calibration": self.calibration,
                        "evaluation": self.evaluation, "zero_shot": self.zero_shot,
                        "engine": {**self.engine.model_dump(), **self.prune.engine.get(method, {})},
                        "cache_dir": self.paths.cache, "overwrite": True,  # the sweep owns its run folders
                        "output_dir": output_root / combination_slug(method_fields)}))
                except ValidationError as error:
                    index = self.models.index(model)
                    raise ConfigError("\n".join(params_path(line, method, index)
                                                 for line in describe_validation_error(error))) from None
        return jobs


def params_path(problem: str, method: str, model_index: int) -> str:
    """A job's problem under the params path the user wrote: method.rank_ratio -> prune.options.oats.rank_ratio."""
    field, _, message = problem.partition(": ")
    if field in ("method.sparsity", "method.pattern"):
        field = {"method.sparsity": "prune.sparsity", "method.pattern": "prune.patterns"}[field]
    elif field == "method" or field.startswith("method."):
        field = f"prune.options.{method}" + field.removeprefix("method")
    elif field in ("model", "allow_unpinned"):
        field = f"models.{model_index}.source"
    return f"{field}: {message}"


def combination_slug(method_fields: dict[str, Any]) -> str:
    pattern = str(method_fields.get("pattern", "unstructured")).replace(":", "of")
    sparsity = method_fields.get("sparsity")
    return f"{method_fields['method']}-{pattern}" + (f"-{sparsity:g}" if sparsity is not None else "")


def read_yaml_mapping(path: Path, field: str) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, bad YAML or another type is a user error naming `field`."""
    if not path.is_file():
        raise ConfigError(f"{field}: '{path}' does not exist or is not a file")
    try:
        fields = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{field}: '{path}' is not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(fields, dict | None):
        raise ConfigError(f"{field}: '{path}' must hold a mapping of fields (key: value), not a "
                         f"{type(fields).__name__}")
    return fields or {}


def load_params(path: Path) -> SweepParams:
    """Read and validate a params file; raises ValidationError (one entry per problem) or ConfigError."""
    fields = read_yaml_mapping(path, "params")
    params = SweepParams.model_validate(fields)
    params.jobs()
    return params
