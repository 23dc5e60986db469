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

Validation reads values only (the jobs are built once, here); `check_sweep` is the sweep's preflight: the paths can
be written and every job passes `pruning.preflight`, each problem under the params path the user wrote.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pruning.config import (
    CalibrationConfig,
    EngineConfig,
    EvaluationConfig,
    PruneJob,
    ZeroShotConfig,
    describe_validation_error,
)
from pruning.errors import ConfigError
from pruning.io import check_output_path
from pruning.methods.registry import METHOD_MODULES, is_structured
from pruning.models.sources import ModelSource
from pruning.preflight import job_problems
from pruning.speed import SpeedSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def known_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [method for method in methods if method not in METHOD_MODULES]
    if unknown:
        raise ConfigError(f"unknown method {', '.join(unknown)}; available: {', '.join(METHOD_MODULES)}")
    return methods


def once_each(values: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    """A list of the grid must not repeat a value: the combination would run twice into the same folder."""
    repeated = sorted({str(value) for value in values if values.count(value) > 1})
    if repeated:
        raise ConfigError(f"{what} {', '.join(repeated)} appears more than once; list each once")
    return values


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
        return once_each(known_methods(methods), "method")

    @field_validator("patterns")
    @classmethod
    def _patterns_once(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        return once_each(patterns, "pattern")

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
        return once_each(sparsity, "sparsity") if isinstance(sparsity, tuple) else sparsity

    @property
    def sparsities(self) -> tuple[float, ...]:
        return self.sparsity if isinstance(self.sparsity, tuple) else (self.sparsity,)


class ModelEntry(_Strict):
    """A model of the sweep: a path-safe name (used in output paths and DVC stage names) and its source."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: str
    base_model: str | None = Field(None, description="hub id the source was made from (a GGUF's original), for the "
                                                     "model card; hub sources and the default GGUF need none")
    allow_unpinned: bool = False

    @model_validator(mode="after")
    def _source_is_well_formed(self) -> ModelEntry:
        try:
            ModelSource.parse(self.source, self.allow_unpinned)
        except ConfigError as error:
            raise ConfigError(f"source: {error}") from None
        return self


class PathsConfig(_Strict):
    """Folders the sweep owns: its run folders under `runs` are replaced by each sweep."""

    runs: Path = Path("runs")
    cache: Path = Path(".pruneflow/cache")
    artifacts: Path = Path(".pruneflow/artifacts")


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


class BenchConfig(SpeedSettings):
    """The bench stage: speed of every form on each device (`pruning.speed`); `in_sweep` also runs it at the end of
    `pruneflow sweep`, for the models of `methods` in the `forms` given (the DVC bench stages measure every model in
    every form)."""

    in_sweep: bool = False
    methods: tuple[str, ...] | None = Field(None, description="the methods whose models the sweep's bench measures "
                                                              "(all when unset); the dense model always")

    @field_validator("methods")
    @classmethod
    def _methods_are_known(cls, methods: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if methods is None else known_methods(methods)

    def settings(self) -> SpeedSettings:
        """Every form: what the DVC bench stages and `pruneflow bench --params` measure."""
        return SpeedSettings.model_validate(self.model_dump(exclude={"in_sweep", "methods", "forms"}))

    def sweep_settings(self) -> SpeedSettings:
        """The sweep's speed stage: only `forms` where given."""
        return SpeedSettings.model_validate(self.model_dump(exclude={"in_sweep", "methods"}))

    def measures(self, method: str) -> bool:
        return self.methods is None or method in self.methods


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

    @model_validator(mode="after")
    def _jobs_are_valid(self) -> SweepParams:
        self.jobs  # noqa: B018  (built once here, so that a bad combination fails at validation)
        return self

    @cached_property
    def jobs(self) -> list[PruneJob]:
        """Every model x method x (pattern, sparsity) combination as a validated job."""
        return [job for model in self.models for method in self.prune.methods
                for job in self.method_jobs(model, method, self.paths.runs / model.name)]

    def model_name(self, source: str) -> str:
        return next(model.name for model in self.models if model.source == source)

    def method_jobs(self, model: ModelEntry, method: str, output_root: Path) -> list[PruneJob]:
        """One method's patterns x sparsities for one model, each in `output_root/<combination>`."""
        jobs = []
        for pattern in ("structured",) if is_structured(method) else self.prune.patterns:
            for sparsity in self.prune.sparsities if pattern in ("unstructured", "structured") else (None,):
                method_fields = {"method": method, "pattern": pattern, **self.prune.options.get(method, {}),
                                 **({"sparsity": sparsity} if sparsity is not None else {})}
                try:
                    jobs.append(PruneJob.model_validate({
                        "model": model.source, "base_model": model.base_model,
                        "allow_unpinned": model.allow_unpinned,
                        "method": method_fields, "calibration": self.calibration,
                        "evaluation": self.evaluation, "zero_shot": self.zero_shot,
                        "engine": {**self.engine.model_dump(), **self.prune.engine.get(method, {})},
                        "cache_dir": self.paths.cache, "artifacts_dir": self.paths.artifacts,
                        # The dense numbers beside the pruned ones in each record and card: the baseline's own
                        # evaluations, served from the store (keyed by the weights), not computed again.
                        "evaluate_dense": self.dense_baseline,
                        "overwrite": True,  # the sweep owns its run folders
                        "output_dir": output_root / combination_slug(method_fields)}))
                except ValidationError as error:
                    index = self.models.index(model)
                    raise ConfigError("\n".join(params_path(line, method, index)
                                                 for line in describe_validation_error(error))) from None
        return jobs


# A floor on one combination's time on 2 cores (measured: tiny models ~10 s of Prefect subflow, MLflow run and
# evaluation; SmolLM2-135M's SparseGPT ~1.5 s per million weights): seconds = 10 + 1.0 x weights / 10^6.
COMBINATION_FLOOR_SECONDS = 10.0
SECONDS_PER_MILLION_WEIGHTS = 1.0
LONG_SWEEP_SECONDS = 24 * 3600.0


def check_sweep_length(params: SweepParams, allowed: bool) -> None:
    """Refuse, unless `allowed`, a grid whose floor estimate is more than a day (a params file with thousands of
    combinations is more likely a slip than a plan); local models' weights are counted from their headers."""
    from pruning.models.sources import stored_parameters

    weights = {model.source: stored_parameters(Path(model.source)) for model in params.models
               if ModelSource.parse(model.source, model.allow_unpinned).kind == "local"}
    seconds = sum(COMBINATION_FLOOR_SECONDS + SECONDS_PER_MILLION_WEIGHTS * weights.get(job.model, 0) / 1e6
                  for job in params.jobs)
    if seconds > LONG_SWEEP_SECONDS and not allowed:
        raise ConfigError(f"prune: {len(params.jobs):,} combinations ({len(params.models)} models x methods x "
                          f"patterns x sparsities) need at least {seconds / 3600:,.0f} hours here; trim "
                          "prune.methods / prune.sparsity / models, or start it anyway with --allow-long")


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
    return SweepParams.model_validate(read_yaml_mapping(path, "params"))


def check_sweep(params: SweepParams) -> None:
    """The sweep's preflight: its folders can be written, and every job passes `pruning.preflight.job_problems`;
    all problems are raised together, each under the params path the user wrote (e.g. models.0.source)."""
    problems = []
    models = {f"model '{model.name}'": Path(model.source) for model in params.models
              if ModelSource.parse(model.source, model.allow_unpinned).kind == "local"}
    for field in ("runs", "cache", "artifacts"):
        try:  # written into, never replaced as a whole: only an output equal to or inside a model is refused
            check_output_path(getattr(params.paths, field), f"paths.{field}", directory=True, overwrite=True,
                              inputs=models, replaced=False)
        except ConfigError as error:
            problems.append(str(error))
    for job in params.jobs:
        index = next(index for index, model in enumerate(params.models) if model.source == job.model)
        problems += [params_path(problem, job.method.method, index) for problem in job_problems(job)
                     if not problem.startswith(("output_dir:", "cache_dir:", "artifacts_dir:"))]
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
